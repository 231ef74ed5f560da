"""Small-scale studies of the Partial FC papers' claims, on the synthetic face generator.

    python tools/study.py rate    # a. sample rate 1.0 / 0.3 / 0.1 on clean data, 3 seeds (~16 min on 2 cores)
    python tools/study.py noise   # b. 40% label flips, 30% conflicting classes: rate 1.0 vs 0.1 ± filtering,
                                  #    2 seeds (~15-20 min)
    python tools/study.py cost    # c. FC-layer step time and memory against the number of classes (~5 min)
    python tools/study.py report  # tables and plots again from the saved JSON, without training

a and b train configs/demo.yaml's small IResNet from scratch, one fresh single-process
`train_horovod.py` per (condition, arm, seed) (--jobs at a time, the cores split between
them), on datasets made by pfc_mx.data.synthetic (cached under --work), and record the
held-out verification accuracy (10-fold, flip) at the end of training. c builds the
Partial FC head alone in a fresh process per (C, rate) with tools/bench_pfc.py, after
predicting its memory; a configuration whose prediction does not fit is recorded as
"does not fit", not run. Every study writes <out>/<study>.json (all runs, settings and
the command), <out>/<study>.md (tables) and <out>/<study>.png. Progress goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from pfc_mx.cli import run_cli
from pfc_mx.errors import ConfigError, DatasetError, TrainingError
from pfc_mx.plan import GiB, MiB, fits, sampled_centers

from bench_pfc import head_budget_bytes, launch, merge  # beside this file in tools/

ROOT = Path(__file__).resolve().parents[1]

STUDIES = ("rate", "noise", "cost")
DEFAULT_SEEDS = {"rate": (0, 1, 2), "noise": (0, 1)}  # each study about 15-20 minutes on 2 cores
TARGET = "synthetic_val"
# insightface arcface_torch docs/speed_benchmark.md: r50, fp16, 8 × V100 32GB, 128 per GPU.
# C: (samples/s model parallel, samples/s Partial FC 0.1, MB per GPU model parallel, MB per GPU PFC 0.1)
ARCFACE_TORCH = {125_000: (4824, 5004, 5306, 4868), 250_000: (4521, 4976, 5826, 5004),
                 500_000: (4013, 4900, 7114, 5202), 1_000_000: (3449, 4803, 9966, 5620),
                 2_000_000: (2593, 4626, 13978, 6472), 4_000_000: (1748, 4208, 23238, 8284)}


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


# ---------------------------------------------------------------- progress
class Progress:
    """'[k/n] what: result (elapsed, ETA)' lines on stderr."""

    def __init__(self, total: int, study: str) -> None:
        self.total, self.study, self.done, self.t0 = total, study, 0, time.time()

    def start(self, what: str) -> None:
        print(f"[{self.done}/{self.total}] {self.study}: running {what}", file=sys.stderr, flush=True)

    def finish(self, what: str, result: str) -> None:
        self.done += 1
        elapsed = time.time() - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        print(f"[{self.done}/{self.total}] {self.study}: {what}: {result} (elapsed {clock(elapsed)}, "
              f"ETA {clock(eta)})", file=sys.stderr, flush=True)


def clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


# ---------------------------------------------------------------- studies a and b: training runs
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


# ---------------------------------------------------------------- study c: the head alone
def predicted_head_bytes(classes: int, rate: float, dim: int, batch: int) -> int:
    """Float32 bytes of one process's head: centers + momentum (2·C·D) + 2 × (S·D + N·S) working set.

    The budget tools/bench_pfc.py measures against; S is the worst case (every sample of the
    batch a distinct positive), pfc_mx.plan.sampled_centers.
    """
    return head_budget_bytes(classes, sampled_centers(classes, rate, batch), dim, batch)


def available_bytes() -> int:
    """MemAvailable of this machine (Linux), or a large number where /proc/meminfo is missing."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 50


def fit_verdict(predicted: int, limit: int, headroom: float) -> Tuple[bool, str]:
    """(fits, words): fits when the prediction leaves `headroom` of the limit free (pfc_mx.plan.fits)."""
    ok = fits(predicted, limit, headroom)
    usable = (1 - headroom) * limit / GiB
    words = (f"fits in {usable:.1f} GiB" if ok else
             f"does not fit in {usable:.1f} GiB (needs {predicted / GiB:.1f} GiB)")
    return ok, words


def run_cost_study(args: argparse.Namespace) -> Dict[str, Any]:
    """Study c: one fresh process per (C, rate) that fits; rows with prediction, verdict and measurement."""

    bench = argparse.Namespace(dim=args.dim, batch=args.batch, steps=args.steps, seconds=0.0)
    configs = [(c, r) for c in args.classes for r in sorted(args.rates, reverse=True)]
    progress, rows = Progress(len(configs), "cost"), []
    for classes, rate in configs:
        what = f"C {classes:,} rate {rate:g}"
        predicted = predicted_head_bytes(classes, rate, args.dim, args.batch)
        limit = min(args.memory_limit, available_bytes())
        ok, words = fit_verdict(predicted, limit, args.headroom)
        row = {"classes": classes, "rate": rate, "sampled": sampled_centers(classes, rate, args.batch),
               "predicted_bytes": predicted, "limit_bytes": limit, "fits": ok, "verdict": words}
        if ok:
            progress.start(what)
            t0 = time.time()
            with tempfile.TemporaryDirectory() as tmp:
                measured = merge(launch(1, classes, rate, bench, Path(tmp)))
            row.update(head_s=measured["head_s"], matmul_s=measured["matmul_s"],
                       growth_bytes=measured["growth_bytes"], seconds=round(time.time() - t0, 1))
            result = f"{1e3 * row['head_s']:.0f} ms/step, {row['growth_bytes'] / MiB:,.0f} MiB"
        else:
            result = words
        rows.append(row)
        progress.finish(what, result)
    return {"study": "cost", "settings": {"dim": args.dim, "batch": args.batch, "steps": args.steps,
                                          "memory_limit_bytes": args.memory_limit, "headroom": args.headroom},
            "rows": rows}


# ---------------------------------------------------------------- tables and plots
def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; cells are str()-ed, numbers right-aligned."""
    blank = ("–", "does not fit")  # a missing number does not make a column text
    numeric = [bool(rows) and all(re.fullmatch(r"[-+0-9.,×% ±]*", str(r[i])) or str(r[i]) in blank for r in rows)
               and not all(str(r[i]) in blank for r in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


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


def cost_tables(record: Dict[str, Any]) -> str:
    """Per (C, rate) measurement, then per C side by side with arcface_torch's published table."""
    rows = []
    for r in record["rows"]:
        measured = [f"{1e3 * r['head_s']:,.0f}", f"{1e3 * r['matmul_s']:,.0f}", f"{r['growth_bytes'] / MiB:,.0f}",
                    f"{r['growth_bytes'] / r['predicted_bytes']:.2f}"] if r["fits"] else ["–"] * 4
        rows.append([f"{r['classes']:,}", f"{r['rate']:g}", f"{r['sampled']:,}",
                     f"{r['predicted_bytes'] / MiB:,.0f}", r["verdict"], *measured])
    first = markdown_table(["C", "rate", "S", "predicted MiB", "verdict", "head ms/step", "matmul ms",
                            "measured MiB", "measured / predicted"], rows)
    by_c: Dict[int, Dict[float, Dict[str, Any]]] = {}
    for r in record["rows"]:
        by_c.setdefault(r["classes"], {})[r["rate"]] = r
    side = []
    for c, rates in by_c.items():
        full, pfc = rates.get(1.0), rates.get(0.1)
        pub = ARCFACE_TORCH.get(c)

        def cell(r: Optional[Dict[str, Any]], key: str, scale: float, fmt: str) -> str:
            if r is None:
                return "–"
            return format(r[key] * scale, fmt) if r["fits"] else "does not fit"
        ratio_t = (f"{full['head_s'] / pfc['head_s']:.1f}×" if full and pfc and full["fits"] and pfc["fits"]
                   else "–")
        ratio_m = (f"{full['growth_bytes'] / pfc['growth_bytes']:.1f}×"
                   if full and pfc and full["fits"] and pfc["fits"] else "–")
        side.append([f"{c:,}", cell(full, "head_s", 1e3, ",.0f"), cell(pfc, "head_s", 1e3, ",.0f"), ratio_t,
                     cell(full, "growth_bytes", 1 / MiB, ",.0f"), cell(pfc, "growth_bytes", 1 / MiB, ",.0f"),
                     ratio_m] + ([f"{pub[0]:,} / {pub[1]:,}", f"{pub[1] / pub[0]:.2f}×",
                                  f"{pub[2]:,} / {pub[3]:,}", f"{pub[2] / pub[3]:.2f}×"] if pub else ["–"] * 4))
    second = markdown_table(["C", "ours: rate 1.0 ms", "rate 0.1 ms", "speed-up", "rate 1.0 MiB", "rate 0.1 MiB",
                             "memory ratio", "arcface_torch samples/s MP / PFC 0.1", "speed-up",
                             "arcface_torch MiB per GPU MP / PFC 0.1", "memory ratio"], side)
    return first + "\n\n" + second + "\n\n" + published_fc_cost()


def published_fc_cost() -> str:
    """arcface_torch's throughput table read as the FC layer's share: time per sample (1 / samples/s) and
    what it adds over the smallest C, where the backbone's time is the same for both arms."""
    c0 = min(ARCFACE_TORCH)
    base_mp, base_pfc = (1e6 / ARCFACE_TORCH[c0][0], 1e6 / ARCFACE_TORCH[c0][1])
    rows = []
    for c, (mp, pfc, _, _) in sorted(ARCFACE_TORCH.items()):
        t_mp, t_pfc = 1e6 / mp, 1e6 / pfc
        add_mp, add_pfc = t_mp - base_mp, t_pfc - base_pfc
        rows.append([f"{c:,}", f"{t_mp:.1f}", f"{t_pfc:.1f}", f"{add_mp:.1f}", f"{add_pfc:.1f}",
                     f"{add_mp / add_pfc:.1f}×" if c != c0 else "–"])
    return markdown_table(["C", "arcface_torch µs/sample MP", "PFC 0.1", f"MP added over C {c0:,}",
                           f"PFC 0.1 added over C {c0:,}", "ratio of the added costs"], rows)


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


def plot_cost(record: Dict[str, Any], path: Path) -> None:
    """Head step time and memory against C per rate (log-log); predictions of what did not fit as ×."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 3.8))
    for rate in sorted({r["rate"] for r in record["rows"]}, reverse=True):
        rows = [r for r in record["rows"] if r["rate"] == rate]
        ran = [r for r in rows if r["fits"]]
        skipped = [r for r in rows if not r["fits"]]
        line, = ax_t.plot([r["classes"] for r in ran], [r["head_s"] for r in ran], "o-", label=f"rate {rate:g}")
        ax_m.plot([r["classes"] for r in ran], [r["growth_bytes"] / GiB for r in ran], "o-", color=line.get_color(),
                  label=f"rate {rate:g}, measured")
        ax_m.plot([r["classes"] for r in rows], [r["predicted_bytes"] / GiB for r in rows], "--",
                  color=line.get_color(), lw=1, label=f"rate {rate:g}, predicted")
        if skipped:
            ax_m.plot([r["classes"] for r in skipped], [r["predicted_bytes"] / GiB for r in skipped], "x",
                      color=line.get_color(), ms=9, mew=2, label=f"rate {rate:g}, does not fit")
    limits = [(1 - record["settings"]["headroom"]) * r["limit_bytes"] / GiB for r in record["rows"]]
    if limits:
        ax_m.axhline(min(limits), color="grey", lw=1, ls=":", label="usable memory")
    ran = any(r["fits"] for r in record["rows"])
    if not ran:
        ax_t.text(0.5, 0.5, "no configuration fitted", ha="center", transform=ax_t.transAxes)
    for ax, label, logs in ((ax_t, "head step time (s)", ran), (ax_m, "memory (GiB)", True)):
        if logs:
            ax.set_xscale("log"), ax.set_yscale("log")
            ax.legend(fontsize=7)
        ax.set_xlabel("classes C"), ax.set_ylabel(label)
    s = record["settings"]
    fig.suptitle(f"study cost: Partial FC head alone, D={s['dim']}, N={s['batch']}, one process", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(record: Dict[str, Any], out: Path) -> str:
    """<out>/<study>.md and .png from a study's record; returns the markdown."""
    study = record["study"]
    text = cost_tables(record) if study == "cost" else accuracy_table(record)
    text = f"command: `{record.get('command', '')}`, wall time {clock(record.get('wall_seconds', 0))}\n\n{text}\n"
    (out / f"{study}.md").write_text(text)
    (plot_cost if study == "cost" else plot_accuracy)(record, out / f"{study}.png")
    return text


# ---------------------------------------------------------------- command line
def _csv(kind: type):
    def parse(text: str) -> List[Any]:
        try:
            return [kind(float(v)) if kind is int else kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers") from None
    return parse


def parser() -> argparse.ArgumentParser:
    from pfc_mx.cli.plan import parse_size
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", default=str(ROOT / "docs" / "study"), help="JSON, tables and plots go here")
    train = argparse.ArgumentParser(add_help=False)
    train.add_argument("--work", default=str(ROOT / "work_dirs" / "study"), help="datasets and runs go here")
    # default per study (DEFAULT_SEEDS): each fits in about 20 minutes on 2 cores
    train.add_argument("--seeds", type=_csv(int), default=None, help="training seeds (data stays fixed); "
                       "default 0,1,2 for rate, 0,1 for noise (2 datasets × 3 arms)")
    train.add_argument("--jobs", type=int, default=2, help="trainings at a time; cores are split between them")
    train.add_argument("--identities", type=int, default=1000, help="training classes")
    train.add_argument("--images", type=int, default=8, help="images per training class")
    train.add_argument("--holdout", type=int, default=300, help="held-out identities of the verification pairs")
    train.add_argument("--pairs", type=int, default=1200, help="verification pairs")
    train.add_argument("--data-seed", type=int, default=0)
    train.add_argument("--batch", type=int, default=32)
    train.add_argument("--steps", type=int, default=240)
    train.add_argument("--warmup", type=float, default=0.1, help="warm-up epochs")
    sub = p.add_subparsers(dest="study", required=True)
    a = sub.add_parser("rate", parents=[common, train], help="a. sample rates on clean data")
    a.add_argument("--rates", type=_csv(float), default=[1.0, 0.3, 0.1])
    b = sub.add_parser("noise", parents=[common, train], help="b. label flips and inter-class conflict")
    b.add_argument("--label-flip", type=float, default=0.4)
    b.add_argument("--conflict", type=float, default=0.3, help="fraction of classes that duplicate an identity")
    b.add_argument("--noise-rate", type=float, default=0.1)
    b.add_argument("--threshold", type=float, default=0.4, help="inter-class filtering threshold")
    c = sub.add_parser("cost", parents=[common], help="c. head time and memory against C")
    c.add_argument("--classes", type=_csv(int), default=sorted(ARCFACE_TORCH))
    c.add_argument("--rates", type=_csv(float), default=[1.0, 0.1])
    c.add_argument("--dim", type=int, default=512)
    c.add_argument("--batch", type=int, default=256, help="N, embeddings per step")
    c.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    c.add_argument("--memory-limit", type=parse_size, default=16 * GiB,
                   help="at most this much (or MemAvailable, if less) for one configuration, e.g. 16GiB")
    c.add_argument("--headroom", type=float, default=0.1, help="fraction of the limit kept free")
    sub.add_parser("report", parents=[common], help="tables and plots from <out>/<study>.json")
    return p


def check(args: argparse.Namespace) -> None:
    """Raise ConfigError for option values no study can run with (fills in the study's default seeds)."""
    if args.study in ("rate", "noise"):
        if args.seeds is None:
            args.seeds = list(DEFAULT_SEEDS[args.study])
        for name in ("jobs", "identities", "images", "holdout", "pairs", "batch", "steps"):
            if getattr(args, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(args, name)}")
        if not args.seeds:
            raise ConfigError("--seeds needs at least one seed")
        rates = args.rates if args.study == "rate" else [args.noise_rate]
        if any(not 0 < r <= 1 for r in rates):
            raise ConfigError(f"sample rates must be in (0, 1], got {rates}")
    if args.study == "cost" and (not args.classes or min(args.classes) < 1 or any(not 0 < r <= 1 for r in args.rates)):
        raise ConfigError("--classes must be positive and --rates in (0, 1]")


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    check(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.study == "report":
        found = [out / f"{s}.json" for s in STUDIES if (out / f"{s}.json").is_file()]
        if not found:
            raise DatasetError(f"no study JSON ({', '.join(STUDIES)}) in {out}")
        for path in found:
            print(write_report(json.loads(path.read_text()), out))
        return 0
    t0, load0 = time.time(), os.getloadavg()
    record = run_cost_study(args) if args.study == "cost" else run_training_study(args)
    record["command"] = "python tools/study.py " + " ".join(argv if argv is not None else sys.argv[1:])
    record["wall_seconds"] = round(time.time() - t0, 1)
    record["machine"] = {"cpus": os.cpu_count(), "load_average_at_start": load0,
                         "load_average_at_end": os.getloadavg()}
    (out / f"{args.study}.json").write_text(json.dumps(record, indent=1))
    print(write_report(record, out))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
