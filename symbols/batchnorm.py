"""The backbones' BatchNorm: MXNet's BatchNorm, or while autograd trains on the CPU the fused kernel of pfc_mx.kernels.

    bn = BatchNorm(momentum=0.9, epsilon=2e-5, in_channels=64, prefix="bn0_")   # nn.BatchNorm's parameters
    with graph_for(mx.cpu(), training=True):          # what Backbone does while it builds its graph
        sym = bn(mx.sym.var("data"))                  # -> pfc_batchnorm(Reshape(data), gamma, beta, mean, var)

In a training step on a 2-core CPU, MXNet's (oneDNN's) BatchNorm takes 30-90 ms on tensors it
normalises in under 2 ms alone: its threads wait for each other inside the operator, and on a
machine whose cores are shared a waiting thread spins while its partner is descheduled
(docs/performance.md, "BatchNorm"). pfc_batchnorm (pfc_mx/csrc/pfc_kernels.cc) does
the same training-mode arithmetic in passes that need no synchronisation inside: batch mean and
biased variance per channel, y = (x - mean) · gamma / sqrt(var + eps) + beta (gamma read as 1 with
fix_gamma), the moving statistics updated with MXNet's rule and roundings (moving = moving ·
momentum + batch · (1 - momentum)) in the forward, where MXNet's CPU BatchNorm does it in its
backward (the same values whenever a backward follows, as in training: a library operator's
backward cannot declare the write), and the gradients of x, gamma and beta.

A library operator is not told whether it runs in training or inference, so pfc_batchnorm only
ever normalises with the batch's statistics: Backbone builds a graph with it only for calls made
while autograd trains (autograd.record(), train_mode()), and keeps a second, stock graph for the
other calls (prediction uses the moving statistics).

It is opt-in: on a CPU whose cores the step has to itself, MXNet's BatchNorm is the faster of the
two (iresnet50, batch 32, 2 threads, idle machine: step 6.09 s with it, 6.23 s with ours, and
86 MiB less at the peak; docs/performance.md, "Layout"), so 'auto' means stock here; ours pays
where threads share cores with other work. Within graph_for, the fused kernel is used when
kernels() is 'fused' (set_kernels, else $PFC_MX_KERNELS), the context is a CPU, the library
loads, and the layer is a float32 BatchNorm over axis 1 with batch statistics whose gamma and
beta gradients are written (grad_req 'write'; gamma may be frozen with fix_gamma). A Reshape in
front of it (symbols.plain_layout) converts oneDNN's blocked layout of the convolution's output
once. Everything else is stock, and to_stock turns a fused graph back into the stock one (the
node keeps its name, inputs and attributes, the Reshape is bypassed), so no saved file needs
our library.
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
from symbols import plain_layout
from symbols.kernel_choice import KernelChoice

FUSED_OP = "pfc_batchnorm"
_choice = KernelChoice("BatchNorm")
_building = threading.local()  # .fused: a Backbone is building its training graph for the fused kernel


def set_kernels(kernels: Optional[str]) -> None:
    """'fused', 'stock', 'auto' (stock: see the module docstring), or None (back to the default)."""
    _choice.set(kernels)


def kernels() -> str:
    """The BatchNorm kernels in force: set_kernels', else $PFC_MX_KERNELS, else 'auto'."""
    return _choice.get()


def use_fused(ctx: mx.Context, choice: Optional[str] = None) -> bool:
    """Whether a training graph for ctx gets the fused kernel (choice: kernels() by default); raises
    when 'fused' is asked for and impossible."""
    if (choice or kernels()) != "fused":  # 'auto' is stock here: see the module docstring
        return False
    if ctx.device_type != "cpu":
        raise ValueError(f"BatchNorm kernels 'fused' need a CPU context, got {ctx}")
    if not pfc_kernels.load():
        raise RuntimeError(f"BatchNorm kernels 'fused' but they cannot be loaded: {pfc_kernels.unavailable_reason()}")
    return True


@contextlib.contextmanager
def graph_for(ctx: mx.Context, training: bool, choice: Optional[str] = None) -> Iterator[None]:
    """Within: BatchNorm blocks called on symbols build the graph for ctx (fused kernel when training and use_fused)."""
    previous = getattr(_building, "fused", False)
    _building.fused = bool(training) and use_fused(ctx, choice)
    try:
        yield
    finally:
        _building.fused = previous


class BatchNorm(nn.BatchNorm):
    """nn.BatchNorm (same parameters, same numbers) running pfc_batchnorm in training graphs built by graph_for."""

    def _fusable(self) -> bool:
        k = self._kwargs
        return (k["axis"] == 1 and not k["use_global_stats"] and not self.fuse_relu
                and self.beta.grad_req == "write" and (k["fix_gamma"] or self.gamma.grad_req == "write")
                and all(np.dtype(p.dtype) == np.float32 for p in (self.gamma, self.beta)))

    def hybrid_forward(self, F, x, gamma, beta, running_mean, running_var):
        if F is mx.sym and getattr(_building, "fused", False) and self._fusable():
            return getattr(F, FUSED_OP)(plain_layout.plain(F, x), gamma, beta, running_mean, running_var,
                                        name="fwd", **self._kwargs)[0]
        return super().hybrid_forward(F, x, gamma, beta, running_mean, running_var)


def to_stock(sym: mx.sym.Symbol) -> mx.sym.Symbol:
    """sym with every pfc_batchnorm node replaced by BatchNorm: same name, inputs (the Reshape of
    plain_layout bypassed) and attributes, stock numbers."""
    graph = json.loads(sym.tojson())
    for node in graph["nodes"]:
        if node["op"] == FUSED_OP:
            plain_layout.bypass(graph["nodes"], node)
            node["op"] = "BatchNorm"
    return mx.sym.load_json(json.dumps(graph))


def fused_in(block: HybridBlock) -> bool:
    """Whether block's cached (hybridized) graph runs the fused kernel."""
    graph = getattr(block, "_cached_graph", None)
    return bool(graph) and any(n["op"] == FUSED_OP for n in json.loads(graph[1].tojson())["nodes"])
