"""compare_original: N whole training steps of insightface's MXNet partial_fc and of ours, same weights and batches.

    python tools/compare_original.py --insightface ~/src/insightface --steps 4 --lr 0.001
    python tools/compare_original.py --insightface ~/src/insightface --steps 4 --kernels original   # bit for bit

The original (pfc_mx.cli.original_pfc: its own code, from the checkout given) builds its r18
backbone, MemoryBank and optimizers; its initial backbone is saved as an insightface checkpoint and
loaded into our Run with `model.pretrained`, and our centers are set to its MemoryBank's. Both then
train on the same batches of a small synthetic face set (30 classes, rate 1, ArcFace, constant lr,
momentum 0.9, wd 5e-4; ours through Run.train_step with optim.wd_rule all).

Tables: "noise floor" (the original against itself with its embedding and center gradients
multiplied by 1 ± 2^-23 each step: how far float32 rounding alone takes it), "free run" (each
side from its own previous step) and "same state" (before each step ours is set to the original's
weights, batch-norm statistics, momenta and centers, so each row is one step's difference alone).
An update is what a step adds to a weight: the optimizer's momentum buffer after the step
(w += momentum), compared as max |Δ| / max |update| per parameter, the worst per group.
Parameters whose update is below 1e-4 of the largest backbone update (betas of BatchNorms followed
by another BatchNorm: their exact gradient is 0, both sides hold float32 noise) and the fixed
gamma of `fc1` are left out and counted. A verdict says "bit for bit" when every loss and
every array (parameters, statistics, momenta, centers and their momentum) is equal at every step;
--kernels original (pfc_mx.head.original, with MXNet's own PReLU in our backbone) does that.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

from pfc_mx.cli.compare_ours import Ours, original_name
from pfc_mx.head.options import KERNELS

GROUPS = ("conv", "fc", "bn gamma", "bn beta", "prelu", "bn stats")
NOISE = 1e-4              # an update below NOISE × the largest backbone update is float32 noise
LIMITS = {"loss": 1e-5, "centers": 1e-5, "backbone": 1e-4}   # the "same state" verdict


def group(name: str) -> str:
    if "running" in name:
        return "bn stats"
    if name.endswith("_alpha"):
        return "prelu"
    if name.endswith("_gamma"):
        return "bn gamma"
    if name.endswith("_beta"):
        return "bn beta"
    return "fc" if name.startswith("pre_fc1") else "conv"


def compare(before_o: Dict, after_o: Dict, before_u: Dict, after_u: Dict) -> Tuple[Dict[str, float], int]:
    """(worst relative update difference per group and for the centers, parameters left out as noise)."""
    def rel(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))
    updates = {}
    for name, value in after_u["params"].items():
        o_name = original_name(name)
        if group(name) == "bn stats":
            updates[name] = (after_o["params"][o_name] - before_o["params"][o_name], value - before_u["params"][name])
        elif name in after_u["momentum"]:
            updates[name] = (after_o["momentum"][o_name], after_u["momentum"][name])
    def is_stats(n: str) -> bool:
        return group(n) == "bn stats"
    largest = {kind: max(np.abs(o).max() for n, (o, _) in updates.items() if is_stats(n) == kind)
               for kind in (False, True)}
    worst: Dict = {g: 0.0 for g in GROUPS}
    worst["worst"] = ("", 0.0, 0.0)   # the backbone's worst: name, difference, its update / the largest
    noise = 0
    for name, (o, u) in updates.items():
        size = float(np.abs(o).max() / largest[is_stats(name)])
        if size < NOISE:
            noise += 1
            continue
        worst[group(name)] = max(worst[group(name)], rel(o, u))
        if not is_stats(name) and rel(o, u) > worst["worst"][1]:
            worst["worst"] = (name, rel(o, u), size)
    worst["centers"] = rel(after_o["centers_momentum"], after_u["centers_momentum"])
    # bit for bit: every trained parameter or statistic, every momentum, the centers and their momentum
    worst["bits"] = (all(np.array_equal(after_o["params"][original_name(n)], after_u["params"][n]) for n in updates)
                     and all(np.array_equal(o, u) for o, u in updates.values())
                     and all(np.array_equal(after_o[k], after_u[k]) for k in ("centers", "centers_momentum")))
    worst["ulp"] = max(_ulps(after_o["params"][original_name(n)], w) for n, w in after_u["params"].items()
                       if n.endswith("_weight"))
    return worst, noise


def _ulps(a: np.ndarray, b: np.ndarray) -> float:
    """max |a − b| of two float32 weight arrays in units in the last place of a's largest magnitude."""
    return float(np.abs(a - b).max() / np.spacing(np.float32(np.abs(a).max())))


def _row(step: int, loss_o: float, loss_u: float, measures: Tuple[Dict, int]) -> Dict:
    return {"step": step + 1, "loss_o": loss_o, "loss_u": loss_u, "loss_rel": abs(loss_o - loss_u) / abs(loss_o),
            **measures[0], "noise": measures[1]}


def run_steps(orig, ours: Ours, steps: int, same_state: bool, floor=None) -> Tuple[List[Dict], List[Dict]]:
    """(ours against the original, the perturbed original `floor` against the original) per step."""
    rows, floor_rows = [], []
    batches = ours.batches()
    for step in range(steps):
        images, labels = next(batches)
        before_o = orig.state()
        if same_state:
            ours.set_state(before_o)
        before_u = ours.state()
        before_f = floor.state(our_names=True) if floor is not None else None
        loss_o, loss_u = orig.step(images, labels), ours.step(step, images, labels)
        after_o = orig.state()
        rows.append(_row(step, loss_o, loss_u, compare(before_o, after_o, before_u, ours.state())))
        if floor is not None:
            loss_f = floor.step(images, labels)
            floor_rows.append(_row(step, loss_o, loss_f, compare(before_o, after_o, before_f,
                                                                 floor.state(our_names=True))))
    return rows, floor_rows


def table(rows: List[Dict]) -> str:
    head = ("| step | loss, original | loss, pfc_mx | relative | centers | " + " | ".join(GROUPS) +
            " | weights, ulp |")
    lines = [head, "|" + "---|" * (6 + len(GROUPS))]
    for r in rows:
        cells = [str(r["step"]), f"{r['loss_o']:.6f}", f"{r['loss_u']:.6f}", f"{r['loss_rel']:.2g}",
                 f"{r['centers']:.2g}"] + [f"{r[g]:.2g}" for g in GROUPS] + [f"{r['ulp']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


FLOOR_FACTOR = 3     # same state: a measure passes within its limit or FLOOR_FACTOR × the original's own noise


def _worst(rows: List[Dict]) -> Dict[str, float]:
    return {"loss": max(r["loss_rel"] for r in rows), "centers": max(r["centers"] for r in rows),
            "backbone": max(r[g] for r in rows for g in GROUPS)}


def verdict(rows: List[Dict], same_state: bool, floor: List[Dict]) -> str:
    """Same state: every measure within LIMITS, or within FLOOR_FACTOR × the noise floor's first step
    (one step of the original against itself from the same state). Free run: the losses against
    the floor's (the updates part by float32 rounding, which the next steps amplify on both sides)."""
    worst = _worst(rows)
    bits = all(r["bits"] and r["loss_o"] == r["loss_u"] for r in rows)
    if bits:
        return (f"**bit for bit** in all {len(rows)} steps: the loss, every trained parameter, statistic and "
                "momentum, the centers and their momentum")
    if not same_state:
        last, own = rows[-1]["loss_rel"], floor[-1]["loss_rel"] if floor else float("nan")
        return (f"losses relative ≤ {worst['loss']:.2g} over {len(rows)} steps; after step {rows[-1]['step']} "
                f"{last:.2g}, the original against itself {own:.2g}")
    noise = _worst(floor[:1]) if floor else {k: 0.0 for k in LIMITS}
    allowed = {k: max(LIMITS[k], FLOOR_FACTOR * noise[k]) for k in LIMITS}
    failed = [f"{k} {worst[k]:.2g} > {allowed[k]:.2g}" for k in LIMITS if worst[k] > allowed[k]]
    said = ", ".join(f"{k} {worst[k]:.2g} (allowed {allowed[k]:.2g}, its own noise {noise[k]:.2g})" for k in LIMITS)
    return f"**same step** ({said})" if not failed else f"**differs**: {'; '.join(failed)} ({said})"


def main(argv=None) -> int:
    from pfc_mx.cli import ArgumentParser, comma_list, non_negative_int, number, positive_int
    p = ArgumentParser(prog="compare_original", description=__doc__.split("\n")[0])
    p.add_argument("--insightface", required=True, help="an insightface checkout (with recognition/partial_fc/mxnet)")
    p.add_argument("--steps", type=number(int, 1, what=">= 1"), default=4)
    p.add_argument("--lr", type=number(float, 0, low_open=True, what="> 0"), default=0.001, help="both, constant")
    p.add_argument("--layers", type=int, default=18, choices=(18, 34, 50), help="iresnet depth of both")
    p.add_argument("--batch", type=number(int, 2, what=">= 2"), default=32)
    p.add_argument("--classes", type=number(int, 2, what=">= 2"), default=30)
    p.add_argument("--seed", type=number(int, 0, what=">= 0"), default=0)
    p.add_argument("--kernels", default="auto", choices=KERNELS,
                   help="our head's partial_fc.kernels ('original': the original's operators in their order)")
    seeds = p.add_argument_group("over seeds (docs/REPRODUCE.md §5.3): final loss and verification accuracy")
    seeds.add_argument("--seeds", type=comma_list(non_negative_int), help="e.g. 0,1,2: one run of both per seed")
    seeds.add_argument("--milestones", type=comma_list(positive_int), help="steps after which the lr is × 0.1")
    seeds.add_argument("--last", type=positive_int, help="final loss: the mean of the last LAST steps (10)")
    seeds.add_argument("--pairs", type=number(int, 20, what=">= 20"), help="held-out verification pairs (200)")
    seeds.add_argument("--images-per-class", type=positive_int, default=8, help="training images per class (8)")
    seeds.add_argument("--ours-init", choices=("original", "xavier", "normal"),
                       help="ours from the original's initial weights (default) or its own draw of model.init")
    args = p.parse_args(argv)
    from pfc_mx.cli import compare_seeds
    compare_seeds.check_args(args)
    logging.basicConfig(level=logging.WARNING)
    from pfc_mx.cli.original_pfc import OriginalPFC, find_code
    from pfc_mx.data.synthetic import generate
    find_code(args.insightface)
    if args.seeds is not None:
        return compare_seeds.main(args)
    with tempfile.TemporaryDirectory(prefix="compare_original_") as tmp:
        work = Path(tmp)
        generate(work / "data", num_identities=args.classes, images_per_identity=max(4, 2 * args.batch // args.classes),
                 holdout_identities=2, num_pairs=4, seed=args.seed, progress=False)
        print(f"insightface partial_fc (MXNet) vs pfc_mx: iresnet{args.layers}, {args.classes} classes, batch "
              f"{args.batch}, ArcFace, rate 1, lr {args.lr:g} constant, momentum 0.9, wd 5e-4, {args.steps} steps, CPU\n")
        floor: List[Dict] = []
        for same_state in (False, True):
            orig = OriginalPFC(args.insightface, args.layers, args.classes, args.batch, args.lr, seed=args.seed)
            orig.save_backbone(str(work / "original"))
            ours = Ours(work / ("same" if same_state else "free"), work / "data", str(work / "original"), args.layers,
                        args.batch, args.lr, args.seed, args.kernels)
            ours.run.pfc.set_rows(0, orig.state()["centers"])
            perturbed = None if same_state else OriginalPFC(args.insightface, args.layers, args.classes, args.batch,
                                                            args.lr, seed=args.seed, perturb=2.0 ** -23)
            rows, floor_rows = run_steps(orig, ours, args.steps, same_state, perturbed)
            ours.run.close(plot=False)
            if floor_rows:
                print("noise floor: the original against itself with its embedding and center gradients "
                      "perturbed by one float32 rounding (× (1 ± 2^-23)) each step, free run\n")
                print(table(floor_rows).replace("loss, pfc_mx", "loss, perturbed"))
                print()
            print("same state: ours set to the original's state before each step" if same_state else
                  "free run: each side from its own previous step", end="\n\n")
            print(table(rows), end="\n\n")
            print(f"(left out: fc1's fixed gamma and, per step, {', '.join(str(r['noise']) for r in rows)} parameters "
                  f"or statistics whose update is below {NOISE:g} of the largest: float32 noise)")
            top = max(rows, key=lambda r: r["worst"][1])
            name, diff, size = top["worst"]
            print(f"worst backbone parameter: {name} at step {top['step']}, {diff:.2g} of its update, "
                  f"which is {size:.2g} of the step's largest" if diff else
                  "worst backbone parameter: none, every update is the original's")
            floor = floor_rows or floor
            print(f"verdict: {verdict(rows, same_state, floor)}\n")
    return 0
