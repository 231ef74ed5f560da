"""Study c: time and memory of the Partial FC head alone against the number of classes C.

One fresh process per (C, rate) with tools/bench_pfc.py, after predicting its memory; a
configuration whose prediction does not fit is recorded as "does not fit", not run. The
tables set the measurements beside insightface arcface_torch's published ones.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from pfc_mx.capacity import GiB, MiB, fits, sampled_centers

from bench_pfc import head_budget_bytes, launch, merge  # beside this file in tools/, like study_common
from study_common import Progress, markdown_table

# insightface's recognition/arcface_torch/docs/speed_benchmark.md: r50, fp16, 8 × V100 32GB, 128 per GPU.
# C: (samples/s model parallel, samples/s Partial FC 0.1, MB per GPU model parallel, MB per GPU PFC 0.1)
ARCFACE_TORCH = {125_000: (4824, 5004, 5306, 4868), 250_000: (4521, 4976, 5826, 5004),
                 500_000: (4013, 4900, 7114, 5202), 1_000_000: (3449, 4803, 9966, 5620),
                 2_000_000: (2593, 4626, 13978, 6472), 4_000_000: (1748, 4208, 23238, 8284)}


def predicted_head_bytes(classes: int, rate: float, dim: int, batch: int) -> int:
    """Float32 bytes of one process's head: centers + momentum (2·C·D) + 2 × (S·D + N·S) working set.

    The budget tools/bench_pfc.py measures against; S is the worst case (every sample of the
    batch a distinct positive), pfc_mx.capacity.sampled_centers.
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
    """(fits, words): fits when the prediction leaves `headroom` of the limit free (pfc_mx.capacity.fits)."""
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
