"""compare_original --seeds: final loss and verification accuracy of the original and ours, over seeds.

    python tools/compare_original.py --insightface ~/src/insightface --seeds 0,1,2 --steps 50 --lr 0.1 \\
        --milestones 30,43 --batch 16 --pairs 100 --last 10     # docs/REPRODUCE.md §5.3

Per seed: a synthetic face set of its own (pfc_mx.data.synthetic: training classes and held-out
identities whose pairs form a `.bin`); the original built with that seed (its own initialisation)
and its initial backbone loaded into ours with `model.pretrained` (or, with --ours-init xavier or
normal, ours from its own seeded draw of that model.init), our centers set to its MemoryBank's. Both train
--steps steps on the same batches; the lr is --lr, × 0.1 for each milestone passed (the original's
MultiFactorScheduler, lowered when the 1-based update count exceeds a milestone; ours is handed the
same lr, and every step checks that the original's MemoryBank used it too). Then both backbones
embed the held-out pairs and pfc_mx.evaluation.verification gives the 10-fold accuracy the demo
reports. The table: per seed the final loss (mean of the last --last steps) and accuracy of each,
and in how many steps the two losses were equal to the bit (all of them with --kernels original),
then mean ± sd over the seeds and the verdict of `compare_sides`.
"""
from __future__ import annotations

import gc
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from pfc_mx.errors import ConfigError

SE_FACTOR = 2.0   # a difference of means within SE_FACTOR standard errors is within seed noise


def step_lr(base: float, milestones: Sequence[int], step: int) -> float:
    """The lr of 0-based step `step`: base × 0.1 per milestone m with step + 1 > m (MXNet's
    MultiFactorScheduler, which counts updates from 1)."""
    return base * 0.1 ** sum(step + 1 > m for m in milestones)


def mean_sd(values: Sequence[float]) -> Tuple[float, float]:
    """(mean, sample standard deviation, ddof 1; 0 for one value)."""
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def compare_sides(original: Sequence[float], ours: Sequence[float]) -> Dict[str, float]:
    """One measure over seeds: mean and sd of each side, the difference of means (ours − original),
    its standard error sqrt((sd_o² + sd_u²) / n) and whether |difference| ≤ SE_FACTOR × that."""
    if len(original) != len(ours) or len(original) < 2:
        raise ValueError(f"need the same number (>= 2) of seeds on both sides, got {len(original)} and {len(ours)}")
    n = len(original)
    mean_o, sd_o = mean_sd(original)
    mean_u, sd_u = mean_sd(ours)
    diff, se = mean_u - mean_o, math.sqrt((sd_o ** 2 + sd_u ** 2) / n)
    return {"mean_o": mean_o, "sd_o": sd_o, "mean_u": mean_u, "sd_u": sd_u, "diff": diff, "se": se,
            "within": abs(diff) <= SE_FACTOR * se}


def final_loss(losses: Sequence[float], last: int) -> float:
    """The mean of the last `last` losses."""
    return float(np.mean(np.asarray(losses[-last:], np.float64)))


def verdict(loss: Dict[str, float], accuracy: Dict[str, float]) -> str:
    """Both measures within seed noise, or which differs."""
    said = "; ".join(f"{what} {m['diff']:+.4g} ({SE_FACTOR:g}·SE {SE_FACTOR * m['se']:.3g})"
                     for what, m in (("final loss", loss), ("accuracy", accuracy)))
    off = [what for what, m in (("final loss", loss), ("accuracy", accuracy)) if not m["within"]]
    return (f"**same within seed noise** (ours − original: {said})" if not off else
            f"**differs** in {' and '.join(off)} (ours − original: {said})")


def table(rows: List[Dict], loss: Dict[str, float], accuracy: Dict[str, float], last: int) -> str:
    lines = [f"| seed | final loss (mean of last {last}), original | pfc_mx | verification accuracy, original | "
             "pfc_mx | steps with the same loss | seconds |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seed']} | {r['loss_o']:.4f} | {r['loss_u']:.4f} | {r['acc_o']:.4f} | {r['acc_u']:.4f} "
                     f"| {r['equal']} of {r['steps']} | {r['seconds']:.0f} |")
    lines.append(f"| mean ± sd | {loss['mean_o']:.4f} ± {loss['sd_o']:.4f} | {loss['mean_u']:.4f} ± "
                 f"{loss['sd_u']:.4f} | {accuracy['mean_o']:.4f} ± {accuracy['sd_o']:.4f} | {accuracy['mean_u']:.4f} ± "
                 f"{accuracy['sd_u']:.4f} | | |")
    return "\n".join(lines)


def check_args(args) -> None:
    """ConfigError (one line) for options the seeds mode cannot use."""
    seeds = args.seeds or []
    if args.seeds is None:
        given = [o for o, v in (("--milestones", args.milestones), ("--last", args.last),
                                ("--ours-init", args.ours_init), ("--pairs", args.pairs)) if v is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} belong to --seeds (final loss and accuracy over seeds)")
        return
    if len(set(seeds)) < 2 or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds needs two or more different seeds, got {','.join(map(str, seeds))}")
    milestones = args.milestones or []
    if any(b <= a for a, b in zip(milestones, milestones[1:])):
        raise ConfigError(f"--milestones must increase, got {','.join(map(str, milestones))}")
    if milestones and milestones[-1] >= args.steps:
        raise ConfigError(f"--milestones {milestones[-1]} is not below --steps {args.steps} (it would never "
                          "lower the lr)")
    if (args.last or 1) > args.steps:
        raise ConfigError(f"--last {args.last} is more than --steps {args.steps}")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_seed(args, seed: int, work: Path, done_steps: int, total_steps: int, started: float) -> Dict:
    """Train both sides for one seed and evaluate them: {seed, loss_o, loss_u, acc_o, acc_u, seconds}."""
    from pfc_mx.cli.compare_ours import Ours
    from pfc_mx.cli.original_pfc import OriginalPFC
    from pfc_mx.data.synthetic import generate
    from pfc_mx.evaluation.verification import verify
    from pfc_mx.train.verification import fixed_batch_forward
    t0 = time.time()
    milestones, last = args.milestones or [], args.last or 10
    data = generate(work / "data", num_identities=args.classes, images_per_identity=args.images_per_class,
                    holdout_identities=max(4, args.classes // 3), num_pairs=args.pairs or 200, seed=seed,
                    progress=False)
    orig = OriginalPFC(args.insightface, args.layers, args.classes, args.batch, args.lr, seed=seed,
                       lr_steps=milestones)
    prefix = None
    if (args.ours_init or "original") == "original":
        prefix = str(work / "original")
        orig.save_backbone(prefix)
    init = "xavier" if prefix else args.ours_init
    ours = Ours(work, work / "data", prefix, args.layers, args.batch, args.lr, seed, args.kernels, init)
    ours.run.pfc.set_rows(0, orig.state()["centers"])
    losses_o: List[float] = []
    losses_u: List[float] = []
    batches = ours.batches()
    for step in range(args.steps):
        images, labels = next(batches)
        lr = step_lr(args.lr, milestones, step)
        losses_o.append(orig.step(images, labels))
        if not math.isclose(orig.module.memory_lr, lr, rel_tol=1e-6):
            raise RuntimeError(f"step {step + 1}: the original's lr {orig.module.memory_lr:g}, ours {lr:g}")
        losses_u.append(ours.step(step, images, labels, lr))
        done = done_steps + step + 1
        if (step + 1) % max(1, args.steps // 10) == 0 or step + 1 == args.steps:
            spent = time.time() - started
            _say(f"seed {seed}: step {step + 1}/{args.steps}, lr {lr:g}, loss original {losses_o[-1]:.4f}, "
                 f"pfc_mx {losses_u[-1]:.4f}; {spent / done:.1f} s a step of both, about "
                 f"{spent / done * (total_steps - done) / 60:.0f} min of training left")
    _say(f"seed {seed}: verification on {data['num_pairs']} held-out pairs")
    acc_o = verify(orig.embedding_forward(), data["bin"], batch_size=args.batch)["accuracy"]
    acc_u = verify(fixed_batch_forward(ours.run.net, ours.run.ctx, args.batch), data["bin"],
                   batch_size=args.batch)["accuracy"]
    ours.run.close(plot=False)
    del orig, ours
    gc.collect()
    return {"seed": seed, "loss_o": final_loss(losses_o, last), "loss_u": final_loss(losses_u, last),
            "acc_o": acc_o, "acc_u": acc_u, "equal": sum(a == b for a, b in zip(losses_o, losses_u)),
            "steps": len(losses_o), "seconds": time.time() - t0}


def _init_said(init: str) -> str:
    return {"original": "the original's initial weights", "xavier": "its own model.init xavier",
            "normal": "its own model.init normal (N(0, 0.1))"}[init]


def main(args) -> int:
    """The seeds mode of compare_original (args parsed and checked there)."""
    import tempfile
    last = args.last or 10
    print(f"insightface partial_fc (MXNet) vs pfc_mx over seeds {','.join(map(str, args.seeds))}: "
          f"iresnet{args.layers}, {args.classes} classes × {args.images_per_class} images, batch {args.batch}, "
          f"ArcFace, rate 1, lr {args.lr:g}" + (f" × 0.1 after steps {','.join(map(str, args.milestones))}"
                                               if args.milestones else " constant") +
          f", momentum 0.9, wd 5e-4, {args.steps} steps, ours from "
          f"{_init_said(args.ours_init or 'original')}, CPU\n", flush=True)
    rows, started = [], time.time()
    for i, seed in enumerate(args.seeds):
        with tempfile.TemporaryDirectory(prefix=f"compare_seeds_{seed}_") as tmp:
            rows.append(run_seed(args, seed, Path(tmp), i * args.steps, len(args.seeds) * args.steps, started))
        r = rows[-1]
        _say(f"seed {seed}: final loss {r['loss_o']:.4f} / {r['loss_u']:.4f}, accuracy {r['acc_o']:.4f} / "
             f"{r['acc_u']:.4f} (original / pfc_mx), {r['seconds']:.0f} s")
    loss = compare_sides([r["loss_o"] for r in rows], [r["loss_u"] for r in rows])
    accuracy = compare_sides([r["acc_o"] for r in rows], [r["acc_u"] for r in rows])
    print(table(rows, loss, accuracy, last), end="\n\n")
    print(f"verdict: {verdict(loss, accuracy)}; {time.time() - started:.0f} s in all")
    return 0
