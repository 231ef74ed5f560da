"""Every message that ends a run reaches the run's log files as well as the terminal."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from pfc_mx.data.loader import RecordLoader, exit_reason
from pfc_mx.data.recordio import RecordDataset
from pfc_mx.data.writer import FlatWriter
from pfc_mx.train.reporting import record_fatal
from tests.ranks import synthetic

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return synthetic(tmp_path_factory, num_identities=6, images_per_identity=4, holdout_identities=4, num_pairs=8,
                     bin_name="synthetic_val", workers=1)


def train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train_horovod.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_an_unreadable_eval_target_stops_at_start_with_one_line_in_the_terminal_and_the_log(data, tmp_path):
    broken = tmp_path / "broken.bin"
    broken.write_bytes(b"not a pickle")
    out = tmp_path / "run"
    r = train(str(ROOT / "configs" / "demo.yaml"), "--set", f"data.rec={data}", f"output.dir={out}",
              f"eval.targets=[{broken}]", "data.num_workers=0", "data.batch_size=8", "output.tensorboard=false", "model.name=iresnet18")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {broken}: not a verification .bin"), r.stderr
    assert lines[0] in (out / "logs" / "rank0.log").read_text()
    assert not list((out / "checkpoints").glob("step-*")) if (out / "checkpoints").exists() else True


def test_a_missing_target_or_data_stops_before_any_run_folder_is_made(data, tmp_path):
    out = tmp_path / "run"
    r = train(str(ROOT / "configs" / "demo.yaml"), "--set", f"data.rec={data}", f"output.dir={out}",
              "eval.targets=[lfw]")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: eval.targets: lfw: no lfw.bin beside the rec in {data} (give names of .bin files there, paths to "
        ".bin files, or [] for none)"]
    assert not out.exists()
    out.mkdir()  # a run folder that exists (a rerun) keeps the reason in its logs
    (out / "logs").mkdir()
    r = train(str(ROOT / "configs" / "demo.yaml"), "--set", f"data.rec={data}", f"output.dir={out}",
              "eval.targets=[lfw]")
    assert r.returncode == 2 and "error: eval.targets: lfw: no lfw.bin" in (out / "logs" / "rank0.log").read_text()


@contextlib.contextmanager
def root_handlers(*handlers: logging.Handler):
    """The root logger with only these handlers (pytest's own are put back after)."""
    root = logging.getLogger()
    saved = list(root.handlers)
    for h in saved:
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    try:
        yield
    finally:
        for h in handlers:
            root.removeHandler(h)
            h.close()
        for h in saved:
            root.addHandler(h)


def test_record_fatal_writes_the_log_files_not_the_console(tmp_path):
    console = io.StringIO()
    with root_handlers(logging.FileHandler(tmp_path / "rank0.log"), logging.StreamHandler(console)):
        assert record_fatal("error: the reason")
    assert "error: the reason" in (tmp_path / "rank0.log").read_text() and console.getvalue() == ""
    with root_handlers():
        assert not record_fatal("error: nowhere", tmp_path / "no-run")  # no log folder: nothing is created
        (tmp_path / "logs").mkdir()
        assert record_fatal("error: before logging was set up", tmp_path)  # a run folder with logs/
    assert not (tmp_path / "no-run").exists()
    assert "error: before logging was set up" in (tmp_path / "logs" / "rank0.log").read_text()


def test_a_killed_loader_worker_is_named_with_its_signal(tmp_path):
    with FlatWriter(tmp_path / "train.rec") as w:
        for i in range(32):
            w.add(cv2.imencode(".jpg", np.full((112, 112, 3), i, np.uint8))[1].tobytes(), i % 4)
    with RecordLoader(RecordDataset(tmp_path / "train.rec"), 4, num_workers=1, prefetch=1) as loader:
        batches = loader.epoch(0)
        next(batches)
        worker = loader._workers[0]
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(5)
        with pytest.raises(RuntimeError, match=r"data loader worker pfc-loader-0-0 died \(killed by SIGKILL: "
                                               r"out of memory\?"):
            for _ in batches:
                time.sleep(0.01)
    assert exit_reason(3) == "exit code 3" and exit_reason(-15) == "killed by SIGTERM"
