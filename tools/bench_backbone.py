"""Backbone training step on the CPU: time per operator family, the step against its convolutions, peak memory.

    python tools/bench_backbone.py [--backbone iresnet50] [--batch 32] [--threads 2] [--steps 2] [--prelu stock,fused]
                                   [--bn stock,fused]
                                   [--malloc default,trim]

For every (backbone, batch, threads, PReLU kernel) a fresh process (OMP_NUM_THREADS = threads,
MXNET_EXEC_BULK_EXEC_TRAIN=0 so that the profiler sees every operator) measures:

- step: one training step of the hybridized backbone (static_alloc, static_shape, as training runs
  it): forward on random 112×112 images, backward of a fixed embedding gradient, and the SGD update
  (momentum 0.9, wd 5e-4) of gluon.Trainer; mean of --steps timed steps after one warm-up step;
- floor: the backbone's convolutions alone, forward and backward (data and weight gradients, no data
  gradient for the layer on the images), each on a random input of the shape it sees in the
  network, hybridized the same way: every distinct convolution (settings and input shape) timed
  once and counted as often as the network runs it; timed alternately with the steps;
- per operator family (MXNet profiler, one more step): seconds of the convolutions (forward,
  backward), PReLU (forward, backward), BatchNorm, the optimizer update and the rest, PReLU's
  share of that profiled step, and the profiled step over its own convolutions' time (a floor
  measured inside the same step: steadier than the separate floor on a machine others load);
- memory: peak resident memory (VmHWM) of the process up to the end of two warm-up steps (the
  first allocates all a step needs: static_alloc, the momentum; the second's temporaries raise the
  resident memory further through glibc's heap; the floor comes later), and what holds it: the
  process after imports; the parameters (weights and BatchNorm's running statistics), the
  gradients and the momentum (bytes of the arrays);
  MXNet's storage taken by the first step's forward (the static memory plan's forward part:
  activations kept for the backward, buffers the backward reuses, workspace) and by its backward
  (pfc_mx.step_memory.storage_phases, MXNet's memory profiler); among the forward's, the
  activations the backward reads (kept_for_backward); and the rest (peak minus all those:
  oneDNN's and glibc's own memory, the small imperative pass that reads the convolutions' shapes);
  images/s = batch / step.

--malloc trim runs the configuration with mallopt(M_TRIM_THRESHOLD, 0) (pfc_mx.step_memory.set_malloc):
glibc then unmaps large freed blocks instead of keeping them in its heap; giving default,trim
compares the two side by side.

--prelu picks the PReLU kernel of the backbone (symbols.prelu): stock (MXNet's operators: in the
hybridized graph where(x > 0, x, broadcast_mul(x, alpha)), symbols.prelu_stock, whose slope
gradient is right where LeakyReLU('prelu')'s is not) or fused (pfc_mx.kernels' pfc_prelu);
giving both compares them side by side. --bn picks the BatchNorm kernel of the training graph
(symbols.batchnorm): stock (MXNet's BatchNorm, oneDNN's) or fused (pfc_mx.kernels' pfc_batchnorm).
`base / this` in the table: the step of the first configuration with the same backbone, batch,
threads and allocator setting over this one's.
Prints one line per configuration on stderr as it finishes and one markdown table at the end.
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
from typing import Dict, List, Optional

from pfc_mx.cli import ArgumentParser, comma_list, one_of, positive_int, run_cli
from pfc_mx.errors import ConfigError
from pfc_mx.proc_memory import reset_peak_rss, status_kib
from pfc_mx.step_memory import MALLOC, kept_for_backward, set_malloc, storage_phases

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20
PRELU_KERNELS = ("stock", "fused")
BN_KERNELS = ("stock", "fused")
# operator family -> MXNet profiler names (the optimizer: any name with "sgd"; the rest: other)
FAMILIES = {
    "conv_fwd": ("Convolution",),
    "conv_bwd": ("_backward_Convolution",),
    # the stock PReLU in a backbone's graph is where(x > 0, x, broadcast_mul(x, alpha)) (symbols.prelu_stock)
    "prelu_fwd": ("LeakyReLU", "pfc_prelu", "where", "broadcast_mul", "_greater_scalar"),
    "prelu_bwd": ("_backward_LeakyReLU", "_backward_pfc_prelu", "_backward_where", "_backward_broadcast_mul"),
    "batchnorm": ("BatchNorm", "_backward_BatchNorm", "pfc_batchnorm", "_backward_pfc_batchnorm"),
}


def families(operator_ms: Dict[str, float]) -> Dict[str, float]:
    """Seconds per family (FAMILIES, optimizer, other) from {operator name: total ms} of the profiler."""
    out = {name: 0.0 for name in (*FAMILIES, "optimizer", "other")}
    for op, ms in operator_ms.items():
        family = next((f for f, names in FAMILIES.items() if op in names), None)
        if family is None:
            family = "optimizer" if "sgd" in op else "other"
        out[family] += ms / 1e3
    return out


def conv_shapes(net, batch: int) -> List[tuple]:
    """(Conv2D block, its input shape at this batch) for every convolution of net (one imperative pass)."""
    import mxnet as mx
    from mxnet.gluon import nn

    from symbols.common import blocks

    seen: List[tuple] = []
    hooks = [b.register_forward_hook(lambda blk, inputs, out: seen.append((blk, inputs[0].shape)))
             for b in blocks(net) if isinstance(b, nn.Conv2D)]
    net(mx.nd.zeros((1, 3, 112, 112)))
    for h in hooks:
        h.detach()
    return [(blk, (batch,) + tuple(shape[1:])) for blk, shape in seen]


def conv_floor(convs: List[tuple]) -> List[tuple]:
    """The distinct convolutions of convs (settings and input shape), each a hybridized Conv2D with a
    random input, an output gradient, and how many times the network runs it: (conv, x, dy, count)."""
    import mxnet as mx
    import numpy as np
    from mxnet.gluon import nn

    counts: Dict[tuple, int] = {}
    for blk, shape in convs:
        k = blk._kwargs
        key = (tuple(shape), k["num_filter"], tuple(k["kernel"]), tuple(k["stride"]), tuple(k["pad"]),
               tuple(k["dilate"]), k["num_group"], bool(k["no_bias"]))
        counts[key] = counts.get(key, 0) + 1
    rng = np.random.default_rng(5)
    layers = []
    for (shape, filters, kernel, stride, pad, dilate, groups, no_bias), count in counts.items():
        conv = nn.Conv2D(filters, kernel, strides=stride, padding=pad, dilation=dilate, groups=groups,
                         use_bias=not no_bias, in_channels=shape[1], prefix=f"floor{len(layers)}_")
        conv.initialize(mx.init.Xavier())
        conv.hybridize(static_alloc=True, static_shape=True)
        x = mx.nd.array(rng.standard_normal(shape).astype(np.float32))
        if shape[1] != 3:  # the layer on the images has no data gradient in the network
            x.attach_grad()
        dy = mx.nd.ones_like(conv(x)) * 1e-3
        layers.append((conv, x, dy, count))
    return layers


def floor_step(layers: List[tuple]) -> float:
    """Seconds of the network's convolutions, forward and backward: each distinct one timed once, times its count."""
    import mxnet as mx
    from mxnet import autograd

    total = 0.0
    for conv, x, dy, count in layers:
        mx.nd.waitall()
        t = time.perf_counter()
        with autograd.record():
            y = conv(x)
        y.backward(dy)
        mx.nd.waitall()
        total += count * (time.perf_counter() - t)
    return total


def worker(args: argparse.Namespace) -> None:
    """One configuration in this process; writes result.json into args.out."""
    import mxnet as mx
    import numpy as np
    from mxnet import autograd, gluon

    import symbols
    from symbols import batchnorm, prelu

    name, batch, kernel, bn = args.backbone[0], args.batch[0], args.prelu[0], args.bn[0]
    set_malloc(args.malloc[0])
    prelu.set_kernels(kernel)
    batchnorm.set_kernels(bn)
    rss0 = status_kib("VmRSS")
    reset_peak_rss()
    net = symbols.get_model(name, embedding_size=args.dim)
    mx.random.seed(0)
    net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2))
    convs = conv_shapes(net, batch)
    net.hybridize(static_alloc=True, static_shape=True)
    rng = np.random.default_rng(0)
    images = mx.nd.array(rng.uniform(0, 255, (batch, 3, 112, 112)).astype(np.float32))
    head_grad = mx.nd.array(rng.standard_normal((batch, args.dim)).astype(np.float32) * 1e-3)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 1e-3, "momentum": 0.9, "wd": 5e-4,
                                                           "lazy_update": False}, kvstore=None)
    params_bytes = sum(p.data().size * 4 for p in net.collect_params().values())

    def step() -> float:
        mx.nd.waitall()
        t = time.perf_counter()
        with autograd.record():
            emb = net(images)
        emb.backward(head_grad)
        trainer.step(1)
        mx.nd.waitall()
        return time.perf_counter() - t

    state = {}

    def forward() -> None:
        with autograd.record():
            state["emb"] = net(images)

    # first warm-up step, phase by phase: builds the graph, its static memory and the momentum
    held = storage_phases([forward, lambda: state["emb"].backward(head_grad), lambda: trainer.step(1)],
                          os.path.join(args.out, "memory.json"))
    step()  # second warm-up step
    peak = status_kib("VmHWM") * 1024  # the floor below is not counted
    grads_bytes = sum(p.grad().size * 4 for p in net.collect_params().values() if p.grad_req != "null")
    kept = kept_for_backward(net._cached_graph[1], tuple(images.shape))
    used = prelu.fused_in(net)
    if used != (kernel == "fused"):
        raise RuntimeError(f"asked for the {kernel} PReLU, but the graph has {'fused' if used else 'stock'}")
    if batchnorm.fused_in(net) != (bn == "fused"):
        raise RuntimeError(f"asked for the {bn} BatchNorm, but the training graph has the other")
    layers = conv_floor(convs)
    floor_step(layers)
    steps, floors = [], []
    for _ in range(args.steps):  # alternately: both see the same machine load
        steps.append(step())
        floors.append(floor_step(layers))
    # the profiler's files go to args.out, which outlives this process (it may write them late)
    mx.profiler.set_config(profile_all=True, aggregate_stats=True, filename=os.path.join(args.out, "profile.json"))
    mx.profiler.set_state("run")
    profiled = step()
    mx.profiler.set_state("stop")
    stats = json.loads(mx.profiler.dumps(reset=True, format="json"))
    operator_ms = {op: v["Total"] for op, v in stats.get("Time", {}).get("operator", {}).items()}
    result = {"backbone": name, "batch": batch, "threads": args.threads[0], "prelu": kernel, "bn": bn,
              "step_s": float(np.mean(steps)), "floor_s": float(np.mean(floors)),
              "profiled_s": profiled, "families": families(operator_ms), "peak_bytes": peak,
              "after_imports_bytes": rss0 * 1024, "params_bytes": params_bytes, "steps": args.steps,
              "malloc": args.malloc[0], "grads_bytes": grads_bytes, "forward_bytes": held[0],
              "backward_bytes": held[1] - held[0], "momentum_bytes": held[2] - held[1], "kept_bytes": kept}
    Path(args.out, "result.json").write_text(json.dumps(result))


def launch(backbone: str, batch: int, threads: int, kernel: str, args: argparse.Namespace, out: Path,
           malloc: str = "default", bn: str = "stock") -> Dict:
    """Run one configuration in a fresh process; return its result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--backbone", backbone, "--batch", str(batch),
           "--threads", str(threads), "--prelu", kernel, "--bn", bn, "--steps", str(args.steps), "--dim", str(args.dim),
           "--out", str(out), "--malloc", malloc]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MXNET_EXEC_BULK_EXEC_TRAIN": "0",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-4000:]}")
    return json.loads((out / "result.json").read_text())


MEMORY = ("after_imports", "params", "grads", "momentum", "forward", "backward")  # parts of the peak, in order


def rest_bytes(r: Dict) -> float:
    """The peak minus its measured parts (MEMORY): oneDNN's and glibc's own memory, and what else the process holds."""
    return r["peak_bytes"] - sum(r[f"{part}_bytes"] for part in MEMORY)


def line(r: Dict) -> str:
    """The one-line summary of a configuration, with what holds its peak memory."""
    f = r["families"]
    mib = {part: r[f"{part}_bytes"] / MIB for part in MEMORY + ("kept",)}
    return (f"{r['backbone']} batch {r['batch']} threads {r['threads']} prelu {r['prelu']} bn {r['bn']} "
            f"malloc {r['malloc']}: "
            f"step {r['step_s']:.2f} s, floor {r['floor_s']:.2f} s ({r['step_s'] / r['floor_s']:.2f}x), PReLU "
            f"{100 * (f['prelu_fwd'] + f['prelu_bwd']) / r['profiled_s']:.1f} % of the profiled step, "
            f"{r['batch'] / r['step_s']:.1f} images/s; peak {r['peak_bytes'] / MIB:.0f} MiB = after imports "
            f"{mib['after_imports']:.0f} + weights {mib['params']:.0f} + gradients {mib['grads']:.0f} + momentum "
            f"{mib['momentum']:.0f} + forward {mib['forward']:.0f} (activations kept for the backward "
            f"{mib['kept']:.0f}) + backward {mib['backward']:.0f} + rest {rest_bytes(r) / MIB:.0f}")


def table(rows: List[Dict]) -> str:
    """Markdown table, one line per configuration; `base / this`: the step of the first configuration with the
    same backbone, batch, threads and allocator setting over this one's."""
    head = ("| backbone | batch | threads | PReLU | BatchNorm | step s | conv floor s | step / floor | base / this | "
            "images/s | "
            "profiled step s | conv fwd s | conv bwd s | profiled / its convs | PReLU fwd s | PReLU bwd s | PReLU % | "
            "BatchNorm s | optimizer s | other s | peak MiB | after imports MiB | params MiB | timed steps | malloc | "
            "gradients MiB | momentum MiB | forward MiB | kept for backward MiB | backward MiB | rest MiB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    first_step: Dict[tuple, float] = {}
    for r in rows:
        first_step.setdefault((r["backbone"], r["batch"], r["threads"], r["malloc"]), r["step_s"])
    for r in rows:
        f = r["families"]
        base = first_step[(r["backbone"], r["batch"], r["threads"], r["malloc"])]
        lines.append(
            f"| {r['backbone']} | {r['batch']} | {r['threads']} | {r['prelu']} | {r['bn']} | "
            f"{r['step_s']:.3f} | "
            f"{r['floor_s']:.3f} | {r['step_s'] / r['floor_s']:.2f} | "
            f"{base / r['step_s']:.2f} | {r['batch'] / r['step_s']:.1f} | "
            f"{r['profiled_s']:.3f} | {f['conv_fwd']:.3f} | {f['conv_bwd']:.3f} | "
            f"{r['profiled_s'] / max(f['conv_fwd'] + f['conv_bwd'], 1e-9):.2f} | {f['prelu_fwd']:.3f} | "
            f"{f['prelu_bwd']:.3f} | {100 * (f['prelu_fwd'] + f['prelu_bwd']) / r['profiled_s']:.1f} | "
            f"{f['batchnorm']:.3f} | {f['optimizer']:.3f} | {f['other']:.3f} | {r['peak_bytes'] / MIB:.0f} | "
            f"{r['after_imports_bytes'] / MIB:.0f} | {r['params_bytes'] / MIB:.0f} | {r['steps']} | {r['malloc']} | "
            f"{r['grads_bytes'] / MIB:.0f} | {r['momentum_bytes'] / MIB:.0f} | {r['forward_bytes'] / MIB:.0f} | "
            f"{r['kept_bytes'] / MIB:.0f} | {r['backward_bytes'] / MIB:.0f} | {rest_bytes(r) / MIB:.0f} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = ArgumentParser(prog="bench_backbone", description=__doc__.split("\n")[0])
    p.add_argument("--backbone", type=comma_list(str), default=["iresnet50"], help="comma-separated registered names")
    p.add_argument("--batch", type=comma_list(positive_int), default=[32], help="comma-separated batch sizes")
    p.add_argument("--threads", type=comma_list(positive_int), default=[os.cpu_count() or 1], help="comma-separated thread counts")
    p.add_argument("--prelu", type=comma_list(one_of(PRELU_KERNELS)), default=list(PRELU_KERNELS),
                   help=f"comma-separated PReLU kernels ({', '.join(PRELU_KERNELS)})")
    p.add_argument("--bn", type=comma_list(one_of(BN_KERNELS)), default=["stock"],
                   help=f"comma-separated BatchNorm kernels of the training graph ({', '.join(BN_KERNELS)})")
    p.add_argument("--steps", type=positive_int, default=2, help="timed steps (and floor runs) after two warm-up steps")
    p.add_argument("--malloc", type=comma_list(one_of(MALLOC)), default=["default"],
                   help=f"comma-separated glibc allocator settings ({', '.join(MALLOC)})")
    p.add_argument("--dim", type=positive_int, default=512, help="embedding size")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    import symbols  # the names only: no backbone is built in this process

    unknown = [b for b in args.backbone if b not in symbols.list_models()]
    if unknown:
        raise ConfigError(f"--backbone: unknown {unknown}; valid names: {', '.join(symbols.list_models())}")
    command = "python tools/bench_backbone.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = []
    for backbone in args.backbone:
        for batch in args.batch:
            for threads in args.threads:
                for bn, kernel, malloc in ((b, k, m) for b in args.bn for k in args.prelu for m in args.malloc):
                    with tempfile.TemporaryDirectory() as tmp:
                        rows.append(launch(backbone, batch, threads, kernel, args, Path(tmp), malloc, bn))
                    print(line(rows[-1]), file=sys.stderr, flush=True)
    print(f"command: {command.strip()}\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
