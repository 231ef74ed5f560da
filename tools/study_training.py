"""Studies a (sample rate on clean data) and b (label noise): one training run per (dataset, arm, seed).

Each run is a fresh single-process `train_horovod.py` on configs/demo.yaml's small IResNet,
on a dataset made by pfc_mx.data.synthetic (cached under --work); its record is the held-out
verification accuracy (10-fold, flip) at the end of training. Tables and plots: mean ± std over seeds.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from pfc_mx.errors import ConfigError, TrainingError

from study_common import Progress, markdown_table  # beside this file in tools/

ROOT = Path(__file__).resolve().parents[1]
TARGET = "synthetic_val"


@dataclass(frozen=True)
class Arm:
    """One training recipe of a study: a name and its `--set` overrides."""

    name: str
    overrides: Tuple[str, ...]


@dataclass(frozen=True)
class Condition:
    """One dataset of a study: a name and its noise (pfc_mx.data.synthetic.generate arguments)."""

    name: str
    label_flip: float = 0.0
    duplicate_fraction: float = 0.0


def pfc_arm(rate: float, threshold: float = 0.0) -> Arm:
    name = "full softmax (rate 1.0)" if rate == 1.0 else f"PFC {rate:g}"
    if threshold > 0:
        name += f" + filtering {threshold:g}"
    return Arm(name, (f"partial_fc.sample_rate={rate}", f"loss.interclass_filtering_threshold={threshold}"))


def training_plan(args: argparse.Namespace) -> List[Tuple[Condition, List[Arm]]]:
    """The (dataset, arms) pairs of study a or b."""
    if args.study == "rate":
        return [(Condition("clean"), [pfc_arm(r) for r in args.rates])]
    arms = [pfc_arm(1.0), pfc_arm(args.noise_rate), pfc_arm(args.noise_rate, args.threshold)]
    return [(Condition(f"{args.label_flip:.0%} label flips", label_flip=args.label_flip), arms),
            (Condition(f"{args.conflict:.0%} conflicting classes", duplicate_fraction=args.conflict), arms)]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def dataset(work: Path, cond: Condition, args: argparse.Namespace) -> Tuple[Path, Dict[str, Any]]:
    """The condition's dataset folder under work (generated once, reused while its summary exists)."""
    spec = dict(num_identities=args.identities, images_per_identity=args.images, label_flip=cond.label_flip,
                duplicate_fraction=cond.duplicate_fraction, holdout_identities=args.holdout,
                num_pairs=args.pairs, bin_name=TARGET, seed=args.data_seed)
    folder = work / "data" / slug("-".join(f"{k[:4]}{v}" for k, v in spec.items() if k != "bin_name"))
    done = folder / "summary.json"
    if done.is_file() and json.loads(done.read_text()).get("spec") == spec:
        return folder, json.loads(done.read_text())
    from pfc_mx.data.synthetic import generate
    print(f"generating {cond.name} dataset in {folder}", file=sys.stderr, flush=True)
    try:
        summary = {"spec": spec, **generate(folder, **spec, progress=False)}
    except ValueError as e:
        raise ConfigError(f"dataset for {cond.name}: {e}") from None
    done.write_text(json.dumps(summary, indent=1))
    return folder, summary


def train_command(data: Path, out: Path, seed: int, arm: Arm, args: argparse.Namespace) -> List[str]:
    """train_horovod.py on configs/demo.yaml with everything a study depends on set explicitly."""
    sets = [f"data.rec={data}", f"output.dir={out}", f"seed={seed}", "model.name=iresnet_demo",
            "model.embedding_size=128", "loss.margin=arcface", "loss.scale=32.0", f"data.batch_size={args.batch}",
            "data.num_workers=0", "optim.lr=0.1", "optim.reference_batch=0", "optim.schedule=poly",
            f"optim.warmup_epochs={args.warmup}", f"optim.max_steps={args.steps}", "eval.every=0",
            f"eval.targets=[{TARGET}]", "output.tensorboard=false", f"output.checkpoint_every={args.steps}",
            "output.keep=1", f"output.log_every={max(1, args.steps // 4)}", "output.resume=none", *arm.overrides]
    return [sys.executable, str(ROOT / "train_horovod.py"), str(ROOT / "configs" / "demo.yaml"), "--set", *sets]


def parse_summary(log_text: str) -> Dict[str, Any]:
    """The `summary: {...}` line train_horovod.py prints at the end."""
    for line in reversed(log_text.splitlines()):
        if line.startswith("summary: "):
            return json.loads(line[len("summary: "):])
    raise TrainingError("training printed no summary line")


def run_trainings(jobs: List[Dict[str, Any]], parallel: int, progress: Progress) -> List[Dict[str, Any]]:
    """Run the jobs (dicts with label, cmd, out, record) `parallel` at a time; return their records."""
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // parallel)),
           "PYTHONPATH": str(ROOT)}
    pending, running, results = list(jobs), [], []
    try:
        while pending or running:
            while pending and len(running) < parallel:
                job = pending.pop(0)
                cached = job["out"] / "result.json"
                if cached.is_file() and json.loads(cached.read_text()).get("cmd") == job["cmd"]:
                    results.append(json.loads(cached.read_text()))
                    progress.finish(job["label"], f"accuracy {results[-1]['accuracy']:.4f} (reused)")
                    continue
                job["out"].mkdir(parents=True, exist_ok=True)
                log = open(job["out"] / "train.log", "w")
                progress.start(job["label"])
                running.append((job, subprocess.Popen(job["cmd"], cwd=ROOT, env=env, stdout=log,
                                                      stderr=subprocess.STDOUT), log, time.time()))
            for item in list(running):
                job, proc, log, t0 = item
                if proc.poll() is None:
                    continue
                running.remove(item)
                log.close()
                results.append(finish_training(job, proc.returncode, time.time() - t0))
                progress.finish(job["label"], f"accuracy {results[-1]['accuracy']:.4f} "
                                f"in {results[-1]['seconds']:.0f} s")
            time.sleep(0.5)
    finally:
        for _, proc, log, _ in running:
            proc.kill()
            proc.wait()
            log.close()
    return results


def finish_training(job: Dict[str, Any], rc: int, seconds: float) -> Dict[str, Any]:
    """The record of a finished run (saved as result.json beside its log); a failed run raises."""
    log_path = job["out"] / "train.log"
    text = log_path.read_text(errors="replace")
    if rc != 0:
        last = [line for line in text.splitlines() if line.strip()][-1:] or ["(no output)"]
        raise TrainingError(f"{job['label']} exited {rc}: {last[0]} (log: {log_path})")
    summary = parse_summary(text)
    record = {**job["record"], "accuracy": float(summary["verification"][TARGET]),
              "final_loss": float(summary["final_loss"]), "steps": int(summary["steps"]),
              "seconds": round(seconds, 1), "cmd": job["cmd"]}
    (job["out"] / "result.json").write_text(json.dumps(record, indent=1))
    return record


def run_training_study(args: argparse.Namespace) -> Dict[str, Any]:
    """Study a or b: every (condition, arm, seed), then the JSON record."""
    work = Path(args.work).resolve()
    plan = training_plan(args)
    datasets, jobs = {}, []
    for cond, arms in plan:
        data, datasets[cond.name] = dataset(work, cond, args)
        for seed in args.seeds:  # seed-major: an interrupted study has every arm for the first seeds
            for arm in arms:
                out = work / "runs" / args.study / slug(cond.name) / slug(arm.name) / f"seed{seed}"
                jobs.append({"label": f"{cond.name} / {arm.name} / seed {seed}", "out": out,
                             "cmd": train_command(data, out, seed, arm, args),
                             "record": {"condition": cond.name, "arm": arm.name, "seed": seed}})
    runs = run_trainings(jobs, args.jobs, Progress(len(jobs), args.study))
    for r in runs:
        r.pop("cmd", None)
    order = {(j["record"]["condition"], j["record"]["arm"], j["record"]["seed"]): i for i, j in enumerate(jobs)}
    runs.sort(key=lambda r: order[(r["condition"], r["arm"], r["seed"])])
    settings = {k: getattr(args, k) for k in ("identities", "images", "holdout", "pairs", "batch", "steps",
                                              "warmup", "seeds", "jobs", "data_seed")}
    return {"study": args.study, "settings": settings, "datasets": datasets, "runs": runs,
            "example_run": " ".join(jobs[0]["cmd"])}




def aggregate(runs: Sequence[Dict[str, Any]], key: str = "accuracy") -> List[Dict[str, Any]]:
    """Group runs by (condition, arm) in first-seen order: n, mean, sample std (ddof 1; 0 for n = 1)."""
    groups: "OrderedDict[Tuple[str, str], List[float]]" = OrderedDict()
    for r in runs:
        groups.setdefault((r["condition"], r["arm"]), []).append(float(r[key]))
    rows = []
    for (cond, arm), values in groups.items():
        v = np.asarray(values, dtype=np.float64)
        rows.append({"condition": cond, "arm": arm, "n": len(v), "mean": float(v.mean()),
                     "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "values": values})
    return rows


def accuracy_table(record: Dict[str, Any]) -> str:
    """Per (condition, arm): mean ± std of held-out accuracy over seeds, its difference to the
    condition's first arm (the reference), and every seed."""
    rows, reference = [], {}
    for g in aggregate(record["runs"]):
        ref = reference.setdefault(g["condition"], g)
        diff = "" if ref is g else f"{100 * (g['mean'] - ref['mean']):+.2f}"
        rows.append([g["condition"], g["arm"], g["n"], f"{100 * g['mean']:.2f} ± {100 * g['std']:.2f}", diff,
                     " ".join(f"{100 * v:.2f}" for v in g["values"])])
    return markdown_table(["data", "arm", "seeds", "accuracy % (mean ± std)", "Δ vs first arm (points)",
                           "per seed %"], rows)


def plot_accuracy(record: Dict[str, Any], path: Path) -> None:
    """Mean ± std per arm (error bars), every seed as a small dot, one group per condition."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = aggregate(record["runs"])
    conditions = list(OrderedDict.fromkeys(g["condition"] for g in groups))
    arms = list(OrderedDict.fromkeys(g["arm"] for g in groups))
    width = 0.7 / len(arms)
    fig, ax = plt.subplots(figsize=(3.0 + 2.5 * len(conditions), 3.8))
    for j, arm in enumerate(arms):
        mine = [(i, g) for i, c in enumerate(conditions) for g in groups if (g["condition"], g["arm"]) == (c, arm)]
        xs = [i + (j - (len(arms) - 1) / 2) * width for i, _ in mine]
        bars = ax.errorbar(xs, [100 * g["mean"] for _, g in mine], yerr=[100 * g["std"] for _, g in mine],
                           fmt="o", ms=7, capsize=4, label=arm)
        for x, (_, g) in zip(xs, mine):
            ax.plot([x + 0.06] * len(g["values"]), [100 * v for v in g["values"]], ".", ms=4,
                    color=bars[0].get_color(), alpha=0.6)
    ax.set_xticks(range(len(conditions)))
    ax.set_xticklabels(conditions)
    ax.set_xlim(-0.6, len(conditions) - 0.4)
    ax.set_ylabel("held-out verification accuracy %")
    ax.set_title(f"study {record['study']}: mean ± std over seeds (small dots: single seeds)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
