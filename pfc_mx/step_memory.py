"""What holds a training step's memory, for the benchmarks: MXNet's storage per phase, the activations
the backward reads, and glibc's allocator setting.

    held = storage_phases([forward, backward, update], "trace.json")  # most bytes MXNet held in each phase
    kept = kept_for_backward(net._cached_graph[1], (32, 3, 112, 112))  # bytes of forward outputs the backward reads
    set_malloc("trim")                                                 # big freed blocks go back to the system

storage_phases reads MXNet's profiler ("Device Storage" counter of profile_memory, aggregated): the
bytes MXNet's storage has allocated and not freed, counted from the first phase's start; a phase
that frees what it allocated shows its own maximum, not less than the phase before. kept_for_backward binds
the graph once at batch 1 (a few MiB) to read which forward outputs the backward nodes take
(Executor.debug_str), and sizes them at the given input shape.
"""
from __future__ import annotations

import ctypes
import json
import re
from typing import Callable, Dict, List, Sequence, Tuple

import mxnet as mx
import numpy as np

MALLOC = ("default", "trim")
_M_TRIM_THRESHOLD = -1  # glibc mallopt parameter


def set_malloc(mode: str) -> None:
    """'default': glibc's own tuning. 'trim': mallopt(M_TRIM_THRESHOLD, 0), which also fixes the mmap
    threshold at 128 KiB (no dynamic raise), so large freed blocks are unmapped instead of kept in the heap."""
    if mode not in MALLOC:
        raise ValueError(f"malloc mode must be one of {', '.join(MALLOC)}, got {mode!r}")
    if mode == "trim" and not ctypes.CDLL("libc.so.6").mallopt(_M_TRIM_THRESHOLD, 0):
        raise RuntimeError("mallopt(M_TRIM_THRESHOLD, 0) failed")


def storage_phases(phases: Sequence[Callable[[], None]], path: str) -> List[float]:
    """Run each phase (then mx.nd.waitall) under MXNet's memory profiler: the most bytes of storage held
    during each, counted from the first phase's start (the profiler's aggregate "Device Storage" maximum)."""
    mx.nd.waitall()
    mx.profiler.set_config(profile_memory=True, aggregate_stats=True, filename=path)
    mx.profiler.dumps(reset=True)
    most = []
    for phase in phases:
        mx.profiler.set_state("run")
        try:
            phase()
            mx.nd.waitall()
        finally:
            mx.profiler.set_state("stop")
        stats = json.loads(mx.profiler.dumps(reset=True, format="json"))
        counters = stats.get("Memory", {}).get("Device Storage", {})
        kib = max((c["Max"] for name, c in counters.items() if name.startswith("Memory: cpu")), default=0.0)
        most.append(max(float(kib) * 1024, most[-1] if most else 0.0))
    return most


def _entry_bytes(sym: mx.sym.Symbol, data_shape: Tuple[int, ...]) -> Dict[Tuple[str, int], int]:
    """{(node name, output index): bytes} of every output of sym's graph at this input shape."""
    internals = sym.get_internals()
    _, shapes, _ = internals.infer_shape(data=data_shape)
    _, types, _ = internals.infer_type(data=np.float32)
    sizes: Dict[Tuple[str, int], int] = {}
    counts: Dict[str, int] = {}
    for i, (shape, dtype) in enumerate(zip(shapes, types)):
        name = internals[i].attr("name") or internals[i].name
        index = counts.get(name, 0)
        counts[name] = index + 1
        sizes[(name, index)] = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return sizes


# ops whose output is their input's array (MXNet plans Reshape in place), or a converted copy that
# replaces it for the readers after it (a Reshape converting oneDNN's layout: symbols/plain_layout.py)
VIEW_OPS = ("Reshape",)


def kept_for_backward(sym: mx.sym.Symbol, data_shape: Tuple[int, ...]) -> int:
    """Bytes of the forward outputs (not parameters or data) that sym's backward nodes read, at this input
    shape; hidden outputs (BatchNorm's per-channel batch mean and variance) are left out, and an output
    of a VIEW_OPS node counts as its input (a view and what it views are one array)."""
    graph = json.loads(sym.tojson())
    nodes = graph["nodes"]
    forward_ops = {n["name"] for n in nodes if n["op"] != "null"}
    viewed = {(n["name"], 0): (nodes[n["inputs"][0][0]]["name"], n["inputs"][0][1])
              for n in nodes if n["op"] in VIEW_OPS}

    def storage(entry: Tuple[str, int]) -> Tuple[str, int]:
        while entry in viewed:
            entry = viewed[entry]
        return entry

    exe = sym.simple_bind(mx.cpu(), data=(1,) + tuple(data_shape[1:]), grad_req="write")
    kept = set()
    for block in exe.debug_str().split("--------------------"):
        head = re.search(r"Op:(\S+), Name=(\S+)", block)
        if head is None or head.group(2) in forward_ops:
            continue
        for name, index in re.findall(r"arg\[\d+\]=(\S+)\((\d+)\)", block):
            entry = storage((name, int(index)))
            if entry[0] in forward_ops:
                kept.add(entry)
    sizes = _entry_bytes(sym, data_shape)  # hidden outputs (BatchNorm's batch mean and variance) are not listed
    return sum(sizes.get(e, 0) for e in kept)
