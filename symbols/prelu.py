"""The backbones' PReLU: one block, three forms with the same numbers, chosen while a Backbone builds its graph.

    relu = PReLU(in_channels=64, prefix="relu0_")     # parameter `relu0_alpha` (64,), as nn.PReLU
    with graph_for(mx.cpu()):                         # what Backbone does while it builds its graph
        sym = relu(mx.sym.var("data"))                # -> pfc_prelu(Reshape(data), relu0_alpha) on the CPU

y = x where x > 0, alpha[c] · x elsewhere, per channel c of axis 1. Within graph_for (with the
context of the Backbone's input), a PReLU called on a symbol is built as:

- fused: pfc_prelu (pfc_mx/csrc/pfc_kernels.cc) when kernels() allows it (set_kernels, else
  $PFC_MX_KERNELS, else 'auto'), the context is a CPU, the library loads, and the slope is a
  float32 parameter whose gradient is written (grad_req 'write': library operators cannot add to
  a gradient). MXNet's own PReLU backward spends about a quarter of an IResNet training step on
  the CPU (it reduces the slope gradient through broadcast kernels); pfc_prelu does forward and
  backward in one pass each: output and input gradient bit for bit, the slope gradient summed in
  another order than MXNet's (float blocks of 64, then double; MXNet: compensated float), both
  within a few float roundings of the exact sum. In front of it a Reshape (symbols.plain_layout)
  hands it MXNet's plain layout, converted once from the blocked layout oneDNN's BatchNorm leaves.
- composed: any other trained slope (GPUs, 'stock', no compiler, float16):
  where(x > 0, x, broadcast_mul(x, alpha)) (symbols.prelu_stock: MXNet's LeakyReLU('prelu')
  can return alpha times the slope gradient in a planned graph).
- LeakyReLU(act_type='prelu'): frozen slopes (its input gradient is right), and everything outside
  graph_for: imperative calls, and every symbol made by calling a network on a symbol (legacy
  checkpoints, ONNX export, model_info).

to_stock turns the first two back into the third (Backbone.export writes its cached graph
through it), so no saved file needs our library and ONNX export writes one PRelu node each.
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
from symbols import plain_layout, prelu_stock
from symbols.kernel_choice import KernelChoice

FUSED_OP = "pfc_prelu"
_choice = KernelChoice("PReLU")
_building = threading.local()  # .form: 'fused' or 'composed' while a Backbone builds its graph (graph_for)


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
    """Within: PReLU blocks called on symbols build a Backbone's graph for ctx, in the fused form
    where use_fused, else in the composed one (see the module docstring)."""
    previous = getattr(_building, "form", None)
    _building.form = "fused" if use_fused(ctx, choice) else "composed"
    try:
        yield
    finally:
        _building.form = previous


class PReLU(nn.PReLU):
    """nn.PReLU (same parameter, same numbers) in the form graph_for asks for (module docstring)."""

    def hybrid_forward(self, F, x, alpha):
        form = getattr(_building, "form", None) if F is mx.sym else None
        trained = self.alpha.grad_req
        if form == "fused" and trained == "write" and np.dtype(self.alpha.dtype) == np.float32:
            return getattr(F, FUSED_OP)(plain_layout.plain(F, x), alpha, name="fwd")
        if form is not None and trained != "null":
            return prelu_stock.composed(F, x, alpha)
        return F.LeakyReLU(x, gamma=alpha, act_type="prelu", name="fwd")


def to_stock(sym: mx.sym.Symbol) -> mx.sym.Symbol:
    """sym with every PReLU as one LeakyReLU(act_type='prelu') node: the fused kernel's (its plain_layout
    Reshape bypassed) and the composed form's (prelu_stock.collapse) alike; same names, inputs, numbers."""
    graph = json.loads(sym.tojson())
    nodes = graph["nodes"]
    for node in nodes:
        if node["op"] == FUSED_OP:
            plain_layout.bypass(nodes, node)
            node["op"] = "LeakyReLU"
            node["attrs"] = {**node.get("attrs", {}), "act_type": "prelu"}
        else:
            prelu_stock.collapse(nodes, node)
    # the nodes bypassed or collapsed are no longer reachable: saving the symbol drops them
    return mx.sym.load_json(json.dumps(graph))


def fused_in(block: HybridBlock) -> bool:
    """Whether block's cached (hybridized) graph runs the fused kernel."""
    graph = getattr(block, "_cached_graph", None)
    return bool(graph) and any(n["op"] == FUSED_OP for n in json.loads(graph[1].tojson())["nodes"])
