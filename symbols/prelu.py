"""The backbones' PReLU: MXNet's LeakyReLU(act_type='prelu'), or on the CPU the fused kernel of pfc_mx.kernels.

    relu = PReLU(in_channels=64, prefix="relu0_")     # parameter `relu0_alpha` (64,), as nn.PReLU
    with graph_for(mx.cpu()):                         # what Backbone does while it builds its graph
        sym = relu(mx.sym.var("data"))                # -> pfc_prelu(data, relu0_alpha) on the CPU

y = x where x > 0, alpha[c] · x elsewhere, per channel c of axis 1. MXNet's own PReLU backward
spends about a quarter of an IResNet training step on the CPU (it reduces the slope gradient
through broadcast kernels); pfc_prelu (pfc_mx/csrc/pfc_kernels.cc) does forward and backward in
one pass each, with the same numbers: output and input gradient bit for bit, the slope gradient
summed in another order than MXNet's (float blocks of 64, then double; MXNet: compensated
float), both within a few float roundings of the exact sum.

Which one a graph gets is decided while a Backbone builds its hybridized graph (graph_for, with
the context of its input): the fused kernel when kernels() allows it (set_kernels, else
$PFC_MX_KERNELS, else 'auto'), the context is a CPU, the library loads, and the slope is a float32
parameter whose gradient is written (grad_req 'write': library operators cannot add to a
gradient). Everything else is stock: imperative calls, GPUs, and every symbol made by calling a
network on a symbol (legacy checkpoints, ONNX export, model_info). Backbone.export writes its
cached graph back with the stock operator (to_stock), so no saved file needs our library.
Parameter names and shapes are nn.PReLU's.
"""
from __future__ import annotations

import contextlib
import json
import threading
from typing import Iterator, Optional

import mxnet as mx
import numpy as np
from mxnet.gluon import HybridBlock, nn

from pfc_mx import kernels as pfc_kernels
from symbols.kernel_choice import KernelChoice

FUSED_OP = "pfc_prelu"
_choice = KernelChoice("PReLU")
_building = threading.local()  # .fused: a Backbone is building its graph for the fused kernel


def set_kernels(kernels: Optional[str]) -> None:
    """'auto' (fused on the CPU when the library loads), 'fused', 'stock', or None (back to the default)."""
    _choice.set(kernels)


def kernels() -> str:
    """The PReLU kernels in force: set_kernels', else $PFC_MX_KERNELS, else 'auto'."""
    return _choice.get()


def use_fused(ctx: mx.Context, choice: Optional[str] = None) -> bool:
    """Whether a graph for ctx gets the fused kernel (choice: kernels() by default); raises when
    'fused' is asked for and impossible."""
    choice = choice or kernels()
    if choice == "stock" or (choice == "auto" and ctx.device_type != "cpu"):
        return False
    if ctx.device_type != "cpu":
        raise ValueError(f"PReLU kernels 'fused' need a CPU context, got {ctx}")
    if pfc_kernels.load():
        return True
    if choice == "fused":
        raise RuntimeError(f"PReLU kernels 'fused' but they cannot be loaded: {pfc_kernels.unavailable_reason()}")
    return False


@contextlib.contextmanager
def graph_for(ctx: mx.Context, choice: Optional[str] = None) -> Iterator[None]:
    """Within: PReLU blocks called on symbols build the graph for ctx (fused kernel where use_fused)."""
    previous = getattr(_building, "fused", False)
    _building.fused = use_fused(ctx, choice)
    try:
        yield
    finally:
        _building.fused = previous


class PReLU(nn.PReLU):
    """nn.PReLU (same parameter, same numbers) that runs pfc_prelu inside graphs built by graph_for."""

    def hybrid_forward(self, F, x, alpha):
        if (F is mx.sym and getattr(_building, "fused", False) and self.alpha.grad_req == "write"
                and np.dtype(self.alpha.dtype) == np.float32):
            return getattr(F, FUSED_OP)(x, alpha, name="fwd")
        return F.LeakyReLU(x, gamma=alpha, act_type="prelu", name="fwd")


def to_stock(sym: mx.sym.Symbol) -> mx.sym.Symbol:
    """sym with every pfc_prelu node replaced by LeakyReLU(act_type='prelu'): same name, inputs, numbers."""
    graph = json.loads(sym.tojson())
    for node in graph["nodes"]:
        if node["op"] == FUSED_OP:
            node["op"] = "LeakyReLU"
            node["attrs"] = {**node.get("attrs", {}), "act_type": "prelu"}
    return mx.sym.load_json(json.dumps(graph))


def fused_in(block: HybridBlock) -> bool:
    """Whether block's cached (hybridized) graph runs the fused kernel."""
    graph = getattr(block, "_cached_graph", None)
    return bool(graph) and any(n["op"] == FUSED_OP for n in json.loads(graph[1].tojson())["nodes"])
