"""Elastic resume keeps the schedule: a run stopped on W ranks and resumed on W' trains what an
uninterrupted run trains, with the lr of the same images seen; the config is compared on resume;
the summary is strict JSON. Real ranks under horovodrun."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from pfc_mx import checkpoint
from pfc_mx.config import load_config
from pfc_mx.train.faults import EXIT_PREEMPTED
from pfc_mx.train.injection import INJECT_STOP
from pfc_mx.train.reporting import read_metrics
from pfc_mx.train.schedule import make_schedule
from tests.ranks import ROOT, TRAIN, launch, rank_env, synthetic

pytestmark = pytest.mark.dist

DEMO = ROOT / "configs" / "demo.yaml"
IMAGES, BATCH, EPOCHS = 96, 8, 3  # 12 identities x 8 images; per-rank batch; epochs


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return synthetic(tmp_path_factory, num_identities=12, images_per_identity=8)


def settings(data: Path, out: Path, *extra: str) -> List[str]:
    return [f"data.rec={data}", f"output.dir={out}", f"data.batch_size={BATCH}", "data.num_workers=0",
            f"optim.epochs={EPOCHS}", "optim.warmup_epochs=1", "output.checkpoint_every=5", "output.log_every=1",
            "eval.every=0", "eval.targets=[]", "output.tensorboard=false", *extra]


def train(data: Path, out: Path, world: int, stop_at: int = 0, *extra: str):
    env = {INJECT_STOP: str(stop_at)} if stop_at else None
    return launch(TRAIN + ["--set", *settings(data, out, *extra)], np_=world, timeout=300, env=env,
                  check=not stop_at)


def steps(out: Path) -> List[Dict]:
    return [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]


def summary(stdout: str) -> Dict:
    return json.loads(stdout.split("summary: ", 1)[1].splitlines()[0])


@pytest.mark.parametrize("before, after, stop", [(1, 2, 14), (2, 1, 7)])
def test_a_resume_on_another_world_size_keeps_the_schedule_and_the_images(data, tmp_path, before, after, stop):
    ref, run = tmp_path / "ref", tmp_path / "run"
    train(data, ref, before)
    stopped = train(data, run, before, stop)
    assert stopped.returncode != 0  # horovodrun's own code is 1 when a rank exits non-zero: read the logs
    for r in range(before):
        log = (run / "logs" / f"rank{r}.log").read_text()
        assert f"rank {r} stops after the preemption checkpoint (exit code {EXIT_PREEMPTED})" in log
    resumed = train(data, run, after)
    base = before * BATCH
    images_at_stop = stop * base
    assert (f"resumed from {run / 'checkpoints' / f'step-{stop:08d}'} at step {stop} ({images_at_stop} images seen"
            in resumed.stdout)
    assert f"saved on {before} rank(s), now {after}: global batch {after * BATCH}" in resumed.stdout

    reference, records = steps(ref), steps(run)
    ref_lr = {r["images"] - base: r["lr"] for r in reference}  # by the images seen before the step
    resumed_records = [r for r in records if r["step"] > stop]
    # the whole run trains every epoch: the same images as the uninterrupted run
    assert records[-1]["images"] == reference[-1]["images"] == EPOCHS * IMAGES
    assert [r["images"] for r in resumed_records] == list(range(images_at_stop + after * BATCH, EPOCHS * IMAGES + 1,
                                                              after * BATCH))
    final = stop + (EPOCHS * IMAGES - images_at_stop) // (after * BATCH)
    assert [r["step"] for r in records] == list(range(1, final + 1))
    # the lr of every resumed step is the uninterrupted schedule's lr for the images seen before it
    cfg = load_config(DEMO, settings(data, ref))
    schedule = make_schedule(cfg.optim, cfg.optim.lr, IMAGES // base, EPOCHS * (IMAGES // base))
    compared = 0
    for r in resumed_records:
        seen = r["images"] - after * BATCH
        assert r["lr"] == pytest.approx(schedule(seen / base), rel=1e-12, abs=1e-15)
        if seen in ref_lr:
            assert r["lr"] == pytest.approx(ref_lr[seen], rel=1e-12, abs=1e-15)
            compared += 1
    assert compared >= len(resumed_records) // 2  # every step of 1 -> 2; every other one of 2 -> 1
    assert resumed_records[0]["lr"] == pytest.approx(ref_lr[images_at_stop], rel=1e-12)
    # the epoch never goes back and ends where the uninterrupted run's does
    epochs = [r["epoch"] for r in records]
    assert epochs == sorted(epochs) and epochs[-1] == reference[-1]["epoch"] == EPOCHS - 1
    state = checkpoint.check_integrity(run / "checkpoints" / f"step-{final:08d}")
    assert (state["step"], state["images"], state["epoch"], state["offset"]) == (final, EPOCHS * IMAGES, EPOCHS, 0)
    assert state["base_batch"] == base and state["global_batch"] == after * BATCH
    done = summary(resumed.stdout)
    assert (done["steps"], done["images"], done["epochs"]) == (final, EPOCHS * IMAGES, EPOCHS)
    assert done["preempted"] is False and np.isfinite(done["final_loss"])


def test_resume_refuses_a_config_that_changes_the_run_unless_allowed(data, tmp_path):
    out = tmp_path / "run"
    train(data, out, 1, 3)
    changed = ["optim.lr=0.05", "partial_fc.sample_rate=1.0", "output.log_every=2"]
    refused = subprocess.run(TRAIN + ["--set", *settings(data, out, *changed)], cwd=ROOT, env=rank_env(),
                             capture_output=True, text=True, timeout=300)  # one process: its own exit code
    assert refused.returncode == 2
    errors = refused.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: cannot resume from ")
    assert "optim.lr: 0.1 -> 0.05" in errors[0] and "partial_fc.sample_rate: 0.5 -> 1.0" in errors[0]
    assert "log_every" not in errors[0] and "output.allow_changes=true" in errors[0]
    allowed = launch(TRAIN + ["--set", *settings(data, out, *changed, "output.allow_changes=true")], np_=1,
                     timeout=300)
    assert "that alter the run, allowed by output.allow_changes: optim.lr: 0.1 -> 0.05" in allowed.stdout
    assert "(safe): output.allow_changes: False -> True; output.log_every: 1 -> 2" in allowed.stdout


def strict_loads(text: str):
    def refuse(constant: str):
        raise AssertionError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_summary_metrics_and_state_are_strict_json_when_no_step_was_trained(data, tmp_path):
    out = tmp_path / "run"
    train(data, out, 1)
    # a run that is already complete resumes, trains nothing and reports its missing loss as null
    again = train(data, out, 1)
    line = again.stdout.split("summary: ", 1)[1].splitlines()[0]
    assert "NaN" not in line and strict_loads(line)["final_loss"] is None
    for path in sorted((out / "checkpoints").glob("step-*/state.json")):
        strict_loads(path.read_text())
    for line in (out / "metrics.jsonl").read_text().splitlines():
        strict_loads(line)
