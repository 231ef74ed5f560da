"""Partial FC head: step time against its bare matrix products, and peak memory growth.

    python tools/bench_pfc.py [--classes 100000,1000000] [--rates 1.0,0.1] [--worlds 1,2] [--steps 3] [--seconds 3]

For every (world size, C, sample rate) a fresh process (``horovodrun -np 2`` for
world 2) builds a PartialFC (D = --dim, global batch N = --batch) and measures:

- head: one training step of the head, ``forward_backward`` + ``step`` (mean of
  the timed steps after one warm-up step: at least --steps, more while they fit
  in --seconds, at most 100; every rank runs the same number), and of it the
  ``step`` alone (update: the
  SGD-momentum pass over the used center rows, which the products leave out), and
  the CPU time of those steps, summed over the ranks' processes (every thread:
  Python, MXNet's workers, Horovod's), and of the busiest Python thread. The
  ranks start each step together, so a step takes at least its CPU time over
  the cores: CPU / (cores × matmul) bounds head / matmul from below;
- matmul: the three plain products that step needs at the same shapes on this
  rank, logits X·Wᵀ (N×D·D×S), dX = G·W and dW = Gᵀ·X (the faster of dot and
  linalg.gemm2), run alternately with the head steps in the same process;
- memory: peak resident memory growth of the process from just before the
  PartialFC is built to the end of its warm-up step, against the budget
  centers + momentum + 2 × (S·D + N·S) float32 of the rank (one-time runtime
  costs are paid before, by one step of a 1000-class head).

Prints one markdown table; ratios are measured side by side in the same run.
The products run on MXNet's OpenBLAS with the kernels pfc_mx.blas chose (the
BLAS line says which; OPENBLAS_CORETYPE=Prescott reproduces the wheel's own
choice on CPUs it does not know).
Threads: the single process uses all cores, each of the two ranks gets half.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from pfc_mx import blas
from pfc_mx.cli import ArgumentParser, comma_list, number, positive_int, run_cli
from pfc_mx.errors import ConfigError
from pfc_mx.proc_memory import reset_peak_rss, status_kib

ROOT = Path(__file__).resolve().parents[1]

MIB = 1 << 20
CORES = os.cpu_count() or 1


def head_budget_bytes(num_local: int, sampled: int, dim: int, batch: int) -> int:
    """Float32 bytes one rank's head may grow by: centers + momentum (2·C·D) + 2 × (S·D + N·S) working set."""
    return 4 * (2 * num_local * dim + 2 * (sampled * dim + batch * sampled))


def worker(args: argparse.Namespace) -> None:
    """One configuration in this process (one rank); writes rank<r>.json into args.out."""
    import mxnet as mx
    import numpy as np

    from pfc_mx import dist
    from pfc_mx.head import PartialFC

    dist.init()
    world, rank = dist.size(), dist.rank()
    c, d, n = args.classes[0], args.dim, args.batch
    b = n // world
    rng = np.random.default_rng([1, rank])
    x = mx.nd.array(rng.standard_normal((b, d)).astype(np.float32))
    def labels(step: int) -> mx.nd.NDArray:
        return mx.nd.array(np.random.default_rng([2, step]).integers(0, c, n)[rank * b:(rank + 1) * b], dtype="int64")

    # one-time runtime costs (OpenMP threads, BLAS buffers, operator set-up) are paid by a tiny head first
    tiny = PartialFC(1000 * world, d, sample_rate=args.rates[0], seed=0)
    tiny.forward_backward(x, labels(0) % (1000 * world))
    tiny.step(0.1, momentum=0.9, wd=5e-4)
    del tiny
    mx.nd.waitall()
    dist.barrier()
    reset_peak_rss()
    rss0 = status_kib("VmRSS")
    pfc = PartialFC(c, d, sample_rate=args.rates[0], seed=0)

    def head(step: int) -> Tuple[float, float, float, float]:
        """Seconds of forward_backward + step, of step alone, and CPU seconds of the process (every
        thread: Python, MXNet's workers, Horovod's) and of the Python thread over the same span."""
        y = labels(step)
        cpu, py = time.process_time(), time.thread_time()
        t = time.perf_counter()
        pfc.forward_backward(x, y)
        mx.nd.waitall()
        u = time.perf_counter()
        pfc.step(0.1, momentum=0.9, wd=5e-4)
        mx.nd.waitall()
        end = time.perf_counter()
        return end - t, end - u, time.process_time() - cpu, time.thread_time() - py

    warm = head(0)[0]
    growth = (status_kib("VmHWM") - rss0) * 1024
    s = len(pfc.last_index)
    budget = head_budget_bytes(pfc.num_local, s, d, n)
    # operands of the bare products: the shard's own rows as W, fresh G and outputs
    xs = mx.nd.array(np.random.default_rng(3).standard_normal((n, d)).astype(np.float32))
    w = pfc.weight[:s] if s else None
    g = mx.nd.zeros((n, s)) if s else None
    dw = mx.nd.zeros((s, d)) if s else None

    def products() -> float:
        if not s:
            return 0.0
        best = float("inf")
        for variant in ("dot", "gemm2"):
            mx.nd.waitall()
            t = time.perf_counter()
            mx.nd.dot(xs, w, transpose_b=True, out=g)
            mx.nd.dot(g, w)
            if variant == "dot":
                mx.nd.dot(g, xs, transpose_a=True, out=dw)
            else:
                mx.nd.linalg.gemm2(g, xs, transpose_a=True, out=dw)
            mx.nd.waitall()
            best = min(best, time.perf_counter() - t)
        return best

    products()
    slowest = max(dist.allgather_object(warm))  # the same step count on every rank
    steps = max(args.steps, min(100, int(args.seconds / max(slowest, 1e-6))))
    heads, updates, cpus, pys, mats = [], [], [], [], []
    for step in range(1, steps + 1):
        dist.barrier()
        total, update, cpu, py = head(step)
        heads.append(total)
        updates.append(update)
        cpus.append(cpu)
        pys.append(py)
        dist.barrier()
        mats.append(products())
    result = {"world": world, "rank": rank, "classes": c, "rate": args.rates[0], "num_local": pfc.num_local,
              "sampled": s, "steps": steps, "head_s": float(np.mean(heads)),
              "update_s": float(np.mean(updates)), "cpu_s": float(np.mean(cpus)), "python_s": float(np.mean(pys)),
              "matmul_s": float(np.mean(mats)),
              "growth_bytes": growth, "budget_bytes": budget}
    Path(args.out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()


def launch(world: int, classes: int, rate: float, args: argparse.Namespace, out: Path) -> List[Dict]:
    """Run one configuration in a fresh process (or two ranks); return the per-rank results."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--classes", str(classes), "--rates", str(rate),
           "--dim", str(args.dim), "--batch", str(args.batch), "--steps", str(args.steps),
           "--seconds", str(args.seconds), "--out", str(out)]
    threads = max(1, CORES // world)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    if world > 1:
        cmd = [str(Path(sys.executable).parent / "horovodrun"), "-np", str(world), "-H", f"localhost:{world}",
               "--gloo", *cmd]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-4000:]}")
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def table(rows: List[Dict]) -> str:
    """Markdown table; one line per (world, C, rate) with the slowest rank's times and largest memory."""
    head = ("| ranks | C | rate | S per rank | head ms | matmul ms | head / matmul | rate 1 / this | "
            "memory growth MiB | budget MiB | growth / budget | update ms | (head − update) / matmul | "
            "CPU ms | Python ms | CPU / (cores × matmul) | timed steps |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    full = {(r["world"], r["classes"]): r["head_s"] for r in rows if r["rate"] == 1.0}
    for r in rows:
        speedup = full.get((r["world"], r["classes"]))
        lines.append(f"| {r['world']} | {r['classes']:,} | {r['rate']:g} | {r['sampled']:,} | {1e3 * r['head_s']:.1f} "
                     f"| {1e3 * r['matmul_s']:.1f} | {r['head_s'] / r['matmul_s']:.2f} | "
                     f"{(speedup / r['head_s']) if speedup else float('nan'):.1f} | {r['growth_bytes'] / MIB:.0f} | "
                     f"{r['budget_bytes'] / MIB:.0f} | {r['growth_bytes'] / r['budget_bytes']:.2f} | "
                     f"{1e3 * r['update_s']:.1f} | {(r['head_s'] - r['update_s']) / r['matmul_s']:.2f} | "
                     f"{1e3 * r['cpu_s']:.1f} | {1e3 * r['python_s']:.1f} | {r['cpu_s'] / (CORES * r['matmul_s']):.2f} | "
                     f"{r['steps']} |")
    return "\n".join(lines)


def merge(ranks: List[Dict]) -> Dict:
    """One row from the ranks of a run: slowest head and products, largest growth relative to budget."""
    worst = max(ranks, key=lambda r: r["growth_bytes"] / r["budget_bytes"])
    return {**ranks[0], "head_s": max(r["head_s"] for r in ranks),
            "update_s": max(r["update_s"] for r in ranks), "matmul_s": max(r["matmul_s"] for r in ranks),
            "cpu_s": sum(r["cpu_s"] for r in ranks), "python_s": max(r["python_s"] for r in ranks),
            "sampled": max(r["sampled"] for r in ranks), "growth_bytes": worst["growth_bytes"],
            "budget_bytes": worst["budget_bytes"]}


RATE = number(float, 0.0, 1.0, low_open=True, what="in (0, 1]")  # a sample rate


def main(argv: Optional[List[str]] = None) -> int:
    p = ArgumentParser(prog="bench_pfc", description=__doc__.split("\n")[0])
    p.add_argument("--classes", type=comma_list(positive_int), default=[100_000, 1_000_000], help="comma-separated C values")
    p.add_argument("--rates", type=comma_list(RATE), default=[1.0, 0.1], help="comma-separated sample rates")
    p.add_argument("--worlds", type=comma_list(positive_int), default=[1, 2], help="comma-separated world sizes (horovodrun -np)")
    p.add_argument("--dim", type=positive_int, default=512)
    p.add_argument("--batch", type=positive_int, default=256, help="global batch N")
    p.add_argument("--steps", type=positive_int, default=3, help="timed steps after one warm-up step, at least")
    p.add_argument("--seconds", type=number(float, 0.0, what=">= 0"), default=3.0,
                   help="more timed steps (up to 100) while the warm-up step's time says they fit in this")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if any(args.batch % w for w in args.worlds):
        raise ConfigError(f"--batch {args.batch} must be divisible by every world size {args.worlds}")
    command = "python tools/bench_pfc.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = []
    for world in args.worlds:
        for classes in args.classes:
            for rate in sorted(args.rates, reverse=True):
                with tempfile.TemporaryDirectory() as tmp:
                    rows.append(merge(launch(world, classes, rate, args, Path(tmp))))
                print(f"done: ranks {world}, C {classes}, rate {rate:g}", file=sys.stderr, flush=True)
    print(f"command: {command.strip()}")
    print(f"BLAS: {blas.describe()}\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
