"""train_horovod.py end to end: 2 real ranks, checkpoints, elastic and crash resume, clear errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from pfc_mx import checkpoint
from pfc_mx.train.reporting import read_metrics
from tests.ranks import ROOT, TRAIN, launch, rank_pids, synthetic

pytestmark = pytest.mark.dist



@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return synthetic(tmp_path_factory, num_identities=12, images_per_identity=6, holdout_identities=6, num_pairs=20,
                     bin_name="synthetic_val")


def overrides(data: Path, out: Path, *extra: str) -> list:
    return ["--set", f"data.rec={data}", f"output.dir={out}", "data.batch_size=8", "data.num_workers=0",
            "optim.max_steps=6", "output.checkpoint_every=2", "output.log_every=1", "eval.every=0",
            "output.tensorboard=false", *extra]


def losses(out: Path) -> dict:
    return {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r}


def test_two_ranks_train_checkpoint_and_report(data, tmp_path):
    out = tmp_path / "run"
    proc = launch(TRAIN + overrides(data, out, "output.tensorboard=true"), timeout=300)
    summary = json.loads(proc.stdout.split("summary: ", 1)[1].splitlines()[0])
    assert summary["steps"] == 6 and np.isfinite(summary["final_loss"])
    assert set(summary["verification"]) == {"synthetic_val"}
    assert sorted(losses(out)) == [1, 2, 3, 4, 5, 6]
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert ckpts == ["step-00000004", "step-00000006"]  # keep: 2 (demo.yaml)
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-00000006"
    state = checkpoint.check_integrity(out / "checkpoints" / "step-00000006")
    assert state["world_size"] == 2 and state["step"] == 6
    for r in (0, 1):
        assert "loss" in (out / "logs" / f"rank{r}.log").read_text() or r == 1
    assert (out / "curves.png").stat().st_size > 0 and any((out / "tensorboard").iterdir())
    assert (out / "config.yaml").is_file()


def stored_centers(folder: Path) -> np.ndarray:
    state = checkpoint.check_integrity(folder)
    w, _ = checkpoint.load_centers(folder, 0, state["num_classes"], state["embedding_size"])
    return w


@pytest.mark.parametrize("world", [1, 3])
def test_run_saved_on_two_ranks_resumes_on_other_world_sizes(data, tmp_path, world):
    out = tmp_path / "run"
    launch(TRAIN + overrides(data, out, "optim.max_steps=4"), timeout=300)
    saved = stored_centers(out / "checkpoints" / "step-00000004")
    # resume and save again without training a step: the centers must come back identical
    args = [sys.executable, "-m", "tests.dist_cases", "reload_centers", str(tmp_path),
            json.dumps({"data": str(data), "out": str(out)})]
    launch(args, np_=world, timeout=300)
    for r in range(world):
        got = np.load(tmp_path / f"rank{r}.npz")
        np.testing.assert_array_equal(got["weight"], saved[got["start"]:got["start"] + len(got["weight"])])
    assert sum(len(np.load(tmp_path / f"rank{r}.npz")["weight"]) for r in range(world)) == len(saved)
    # and training goes on from step 4 on this world size (a longer run: a change allowed explicitly)
    proc = launch(TRAIN + overrides(data, out, "output.allow_changes=true"), np_=world, timeout=300)
    # max_steps counts steps of the run's first global batch (2 x 8): 6 x 16 = 96 images, 64 of them done
    last = 4 + (96 - 64) // (8 * world)
    assert "resumed from" in proc.stdout and f"step 5/{last}" in proc.stdout
    state = checkpoint.check_integrity(out / "checkpoints" / f"step-{last:08d}")
    assert state["world_size"] == world and state["images"] == 64 + (last - 4) * 8 * world


def running(pid: int) -> bool:
    """Whether process pid runs (a zombie has ended)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sigkill_mid_training_resumes_with_identical_losses(data, tmp_path):
    ref = tmp_path / "ref"
    launch(TRAIN + overrides(data, ref, "optim.max_steps=8", "partial_fc.sample_rate=0.5"), timeout=300)
    crashed = tmp_path / "crashed"
    cmd = [str(Path(sys.executable).parent / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo",
           *TRAIN, *overrides(data, crashed, "optim.max_steps=8", "partial_fc.sample_rate=0.5")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    ranks = rank_pids(proc)
    deadline = time.time() + 240
    while time.time() < deadline and max(losses(crashed) or [0]) < 5:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # horovodrun only: its helpers then stop the ranks (no checkpoint)
    proc.wait()
    deadline = time.time() + 60
    while any(running(p) for p in ranks.values()) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(running(p) for p in ranks.values()), "the ranks outlived horovodrun"
    for r in (0, 1):  # a SIGTERM after the launcher died is a hard stop, not a preemption
        assert "preempted" not in (crashed / "logs" / f"rank{r}.log").read_text()
    done = max(losses(crashed) or [0])
    assert 5 <= done < 8, f"the kill came at step {done}"
    saved = int((crashed / "checkpoints" / "latest").read_text().strip().split("-")[1])
    assert saved in (4, 6) and saved <= done
    proc = launch(TRAIN + overrides(data, crashed, "optim.max_steps=8", "partial_fc.sample_rate=0.5"), timeout=300)
    assert f"resumed from {crashed / 'checkpoints' / f'step-{saved:08d}'} at step {saved}" in proc.stdout
    a, b = losses(ref), losses(crashed)
    assert sorted(b) == list(range(1, 9))
    after = range(saved + 1, 9)
    np.testing.assert_allclose([b[s] for s in after], [a[s] for s in after], rtol=1e-5, atol=1e-6)


def run_single(args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "train_horovod.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_bad_config_missing_data_and_unwritable_output_give_one_line(data, tmp_path):
    cfg = str(ROOT / "configs" / "demo.yaml")
    r = run_single([cfg, "--set", "optim.lrr=0.1"])
    assert r.returncode == 2 and "unknown key 'optim.lrr'; did you mean 'lr'" in r.stderr
    assert "Traceback" not in r.stderr
    r = run_single([cfg, "--set", f"data.rec={tmp_path / 'nowhere'}", f"output.dir={tmp_path / 'o'}"])
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    r = run_single([cfg, "--set", f"data.rec={data}", f"output.dir={blocked / 'run'}"])
    assert r.returncode == 2 and "is not writable" in r.stderr and "Traceback" not in r.stderr


def test_numbers_written_as_people_write_them_train(data, tmp_path):
    """`--set optim.weight_decay=5e-4` (a string to YAML 1.1) trains, as arcface_torch's configs write it."""
    out = tmp_path / "run"
    args = overrides(data, out, "optim.weight_decay=5e-4", "optim.lr=1e-1", "optim.max_steps=2e0")
    r = run_single([str(ROOT / "configs" / "demo.yaml"), *args])
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.split("summary: ", 1)[1])
    assert summary["steps"] == 2 and np.isfinite(summary["final_loss"])
    state = json.loads((checkpoint.resolve(out) / checkpoint.STATE).read_text())
    assert state["config"]["optim"]["weight_decay"] == 5e-4 and state["config"]["optim"]["lr"] == 0.1
