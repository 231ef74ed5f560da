"""Every bad numeric argument of every tool, and train_horovod's argument order: one line, exit 2."""
from __future__ import annotations

import importlib
import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest

from pfc_mx.cli import fraction, int_at_least, number, positive_int, run_cli
from tests.ranks import rank_env

ROOT = Path(__file__).resolve().parents[1]


def tool(name: str):
    if name == "train_horovod":
        spec = importlib.util.spec_from_file_location("train_horovod", ROOT / "train_horovod.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(name)  # tools/<name>.py, as `python tools/<name>.py` runs it


CASES = [
    ("rec", "synth OUT --identities 0", "argument --identities: must be >= 1, got 0"),
    ("rec", "synth OUT --identities 3 --label-flip 2", "argument --label-flip: must be in [0, 1], got 2"),
    ("rec", "synth OUT --identities 3 --label-flip nan", "argument --label-flip: must be in [0, 1], got nan"),
    ("rec", "synth OUT --identities 3 --holdout 0", "argument --holdout: must be >= 2, got 0"),
    ("rec", "synth OUT --identities 3 --pairs 0", "argument --pairs: must be >= 2, got 0"),
    ("rec", "synth OUT --identities 3 --duplicate-fraction 1", "argument --duplicate-fraction: must be in [0, 1)"),
    ("rec", "synth OUT --identities 3 --images-per-identity -2", "--images-per-identity: must be >= 1"),
    ("rec", "synth OUT --identities 3 --seed -1", "argument --seed: must be >= 0"),
    ("rec", "synth OUT --identities three", "argument --identities: expected an integer, got 'three'"),
    ("rec", "validate DATA --workers 0", "argument --workers: must be >= 1, got 0"),
    ("rec", "validate DATA --show -1", "argument --show: must be >= 0"),
    ("rec", "inspect DATA --sample 0", "argument --sample: must be >= 1"),
    ("rec", "build SRC OUT --quality 101", "argument --quality: must be in [0, 100], got 101"),
    ("rec", "build SRC OUT --size 0", "argument --size: must be >= 8"),
    ("rec", "unpack DATA OUT --limit -3", "argument --limit: must be >= 0"),
    ("rec", "frobnicate", "argument command: invalid choice: 'frobnicate'"),
    ("bench_data", "--images 0", "argument --images: must be >= 1, got 0"),
    ("bench_data", "--workers 1 0", "argument --workers: must be >= 1, got 0"),
    ("bench_data", "--repeat inf", "argument --repeat: expected an integer, got 'inf'"),
    ("eval_verification", "MODEL X.bin --batch-size 0", "argument --batch-size: must be >= 1, got 0"),
    ("eval_ijb", "MODEL ROOT --workers 0", "argument --workers: must be >= 1, got 0"),
    ("eval_ijb", "MODEL ROOT --batch-size -1", "argument --batch-size: must be >= 1"),
    ("export_onnx", "RUN --batch-check 0", "argument --batch-check: must be >= 1, got 0"),
    ("model_info", "--size 4", "argument --size: must be >= 32, got 4"),
    ("model_info", "--embedding-size 0", "argument --embedding-size: must be >= 1"),
    ("train_horovod", "configs/demo.yaml --set optim.lr=.inf", "optim.lr: expected a finite number, got inf"),
    ("train_horovod", "configs/demo.yaml --set optim.momentum=.nan", "optim.momentum: expected a finite number"),
    ("train_horovod", "--set optim.lrr=1 configs/demo.yaml", "unknown key 'optim.lrr'; did you mean 'lr'"),
    ("train_horovod", "--set optim.lr=0.1", "give the config file"),
    ("train_horovod", "configs/demo.yaml --set optim.lr=0.1 other.yaml", "unexpected argument(s) other.yaml"),
]


@pytest.mark.parametrize("name, argv, needle", CASES, ids=[f"{c[0]} {c[1]}" for c in CASES])
def test_bad_argument_is_one_error_line_and_exit_2(name, argv, needle, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert run_cli(tool(name).main, argv.split()) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], captured.err
    assert captured.out == ""


def test_the_argparse_types_agree_with_the_ranges_they_state():
    assert positive_int("3") == 3 and int_at_least(2)("2") == 2 and fraction("0") == 0.0 and fraction("1") == 1.0
    for parse, text in ((positive_int, "0"), (fraction, "1.0001"), (fraction, "-0.0001"), (fraction, "inf"),
                        (number(float, 0, 1, low_open=True), "0"), (number(float, 0, 1, high_open=True), "1")):
        with pytest.raises(Exception, match="must be"):
            parse(text)
    assert math.isclose(number(float, 0, 1, low_open=True)("1e-9"), 1e-9)


def test_synth_process_exits_2_with_one_line():
    r = subprocess.run([sys.executable, "tools/rec.py", "synth", "out", "--identities", "0"], cwd=ROOT,
                       env=rank_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == ["error: argument --identities: must be >= 1, got 0 "
                                             "(see rec.py synth --help)"]
