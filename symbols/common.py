"""Pieces every backbone shares: the input normalisation, the embedding head, the base class.

Naming: a backbone is a block with an empty prefix whose layers all carry explicit
prefixes, so parameter names are the same in every instance (`conv0_weight`,
`stage1_unit1_bn1_gamma`, ...), which makes checkpoints loadable by name. The head's
graph nodes are named exactly `bn1`, `pre_fc1` and `fc1` (not `fc1_fwd`), so an
exported symbol exposes `fc1_output` like the legacy insightface models.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, Optional, Tuple

import mxnet as mx
from mxnet import autograd
from mxnet.gluon import HybridBlock, nn

from symbols import batchnorm, prelu
from symbols.kernel_choice import checked

MEAN, SCALE = 127.5, 0.0078125     # raw RGB 0..255 -> about [-1, 1]
MXNET_DEFAULT_EPS = 1e-3           # mx.sym.BatchNorm's eps when a symbol passes none


def blocks(block: HybridBlock) -> Iterator[HybridBlock]:
    """block and every block inside it, depth first."""
    yield block
    for child in block._children.values():
        yield from blocks(child)


def batch_norm(prefix: str, channels: int, bn_mom: float, bn_eps: float, before_prelu: bool = False) -> nn.BatchNorm:
    """BatchNorm over axis 1 with the legacy defaults (momentum 0.9, eps 2e-5) passed in.

    before_prelu: its output feeds a PReLU, which keeps it for its backward anyway and reads MXNet's
    plain layout: symbols.batchnorm's block, the fused kernel in training graphs on the CPU (elsewhere
    the fused kernel would keep one more activation for its backward, and cost layout conversions
    around oneDNN's convolutions).
    """
    cls = batchnorm.BatchNorm if before_prelu else nn.BatchNorm
    return cls(momentum=bn_mom, epsilon=bn_eps, in_channels=channels, prefix=prefix)


class NamedBatchNorm(nn.BatchNorm):
    """nn.BatchNorm whose graph node is called exactly `node` (e.g. `fc1`, output `fc1_output`).

    flat_input: x is (B, C); the BatchNorm (node `<node>_bn`) runs on it as (B, C, 1, 1) (the same
    arithmetic), and the node `node` flattens its output back to (B, C). MXNet 1.9.1's oneDNN BatchNorm crashes the
    process on a 2-D input after a BatchNorm on a convolution's (B, C, 1, 1) output with the same
    eps (its primitive cache ignores the layout): see symbols/mobilefacenet.py.
    """

    def __init__(self, node: str, flat_input: bool = False, **kwargs: Any):
        super().__init__(prefix=node + "_", **kwargs)
        self._node = node
        self._flat_input = flat_input

    def hybrid_forward(self, F, x, gamma, beta, running_mean, running_var):
        with mx.name.NameManager():      # leave the enclosing Prefix scope: the node keeps its bare name
            if not self._flat_input:
                return F.BatchNorm(x, gamma, beta, running_mean, running_var, name=self._node, **self._kwargs)
            x = F.reshape(x, (0, 0, 1, 1), name=self._node + "_as4d")
            x = F.BatchNorm(x, gamma, beta, running_mean, running_var, name=self._node + "_bn", **self._kwargs)
            return F.flatten(x, name=self._node)


class NamedDense(nn.Dense):
    """nn.Dense (flattening its input) whose graph node is called exactly `node` (e.g. `pre_fc1`)."""

    def __init__(self, node: str, units: int, **kwargs: Any):
        super().__init__(units, prefix=node + "_", **kwargs)
        self._node = node

    def hybrid_forward(self, F, x, weight, bias=None):
        with mx.name.NameManager():
            return F.FullyConnected(x, weight, bias, no_bias=bias is None, num_hidden=self._units,
                                    flatten=True, name=self._node)


class EmbeddingHead(HybridBlock):
    """Features (B, C, H, W) → BN `bn1` → dropout → FC `pre_fc1` → BN `fc1` → (B, D) embeddings.

    The insightface "E" output with fixed gamma in `fc1`; `pre_bn=False, fc_bias=False,
    fix_gamma=False` gives arcface_torch's MobileFaceNet head (Linear without bias, BatchNorm1d).
    in_channels / in_units 0 are inferred on the first forward.
    """

    def __init__(self, embedding_size: int, in_channels: int = 0, in_units: int = 0, dropout: float = 0.0,
                 bn_mom: float = 0.9, bn_eps: float = 2e-5, pre_bn: bool = True, fc_bias: bool = True,
                 fix_gamma: bool = True):
        super().__init__(prefix="")
        self._dropout = float(dropout)
        self.bn1 = (NamedBatchNorm("bn1", momentum=bn_mom, epsilon=bn_eps, in_channels=in_channels)
                    if pre_bn else None)
        self.pre_fc1 = NamedDense("pre_fc1", embedding_size, use_bias=fc_bias, in_units=in_units)
        self.fc1 = NamedBatchNorm("fc1", flat_input=True, momentum=bn_mom, epsilon=bn_eps, scale=not fix_gamma,
                                  in_channels=embedding_size)

    def hybrid_forward(self, F, x):
        if self.bn1 is not None:
            x = self.bn1(x)
        if self._dropout > 0:
            with mx.name.NameManager():
                x = F.Dropout(x, p=self._dropout, name="dropout0")
        return self.fc1(self.pre_fc1(x))


class Backbone(HybridBlock):
    """Raw RGB (B, 3, 112, 112), uint8 or float32 in 0..255 → (B, D) float32 embeddings.

    Subclasses set `self.body` (run in float16 when fp16=True) and `self.head` (always
    float32), then call `self._finish()`. `config` holds the constructor arguments, so
    `type(net)(**net.config)` builds the same network with the same parameter names.
    With fp16=True the body's weights are float16 (BatchNorm parameters stay float32,
    as in Gluon) and the output is still float32; MXNet runs float16 convolutions on GPUs only.
    The hybridized graph runs the fused PReLU kernel on the CPU, and while autograd trains the
    fused BatchNorm too: a hybridized Backbone keeps one cached graph for calls made while autograd
    trains and one for the others (symbols.batchnorm: the fused kernel normalises with the batch's
    statistics only). Exported files have the stock operators.
    """

    def __init__(self, config: Dict[str, Any]):
        super().__init__(prefix="")
        self.config = dict(config)
        self.fp16 = bool(config.get("fp16", False))
        self._pinned_kernels: Optional[Tuple[str, str]] = None  # use_kernels'
        self.body: Optional[HybridBlock] = None
        self.head: Optional[HybridBlock] = None

    def _finish(self) -> None:
        if self.fp16:
            self.body.cast("float16")

    def _get_graph(self, *args):
        """HybridBlock's graph, built for the context of the input: the fused PReLU on the CPU, else
        the stock one in the form whose slope gradient is right (symbols.prelu), and the fused
        BatchNorm when autograd trains (symbols.batchnorm).
        Gluon calls this once per cached graph, with the first input's NDArrays."""
        if self._cached_graph:
            return self._cached_graph
        ctx = next((a.context for a in args if isinstance(a, mx.nd.NDArray)), mx.cpu())
        training = bool(autograd.is_training())
        # both graphs of one hybridization get the kernels in force when the first was built
        choices = (getattr(self, "_graph_kernels", None) or self._pinned_kernels
                   or (prelu.kernels(), batchnorm.kernels()))
        self._graph_kernels = choices
        fused_bn = not self.fp16 and batchnorm.use_fused(ctx, choices[1])
        self._graph_mode = training if fused_bn else None  # None: the graph serves both modes
        with prelu.graph_for(ctx, choices[0]), batchnorm.graph_for(ctx, training and fused_bn, choices[1]):
            return super()._get_graph(*args)

    def _call_cached_op(self, *args):
        """HybridBlock's cached call, on the cached graph of the current autograd mode (training or
        not) when the two differ: the other mode's graph, op and arguments are kept aside."""
        mode = getattr(self, "_graph_mode", None)
        training = bool(autograd.is_training())
        if self._cached_op is not None and mode is not None and mode != training:
            aside = getattr(self, "_graph_aside", {})
            aside[mode] = (self._cached_graph, self._cached_op, self._cached_op_args)
            self._cached_graph, self._cached_op, self._cached_op_args = aside.pop(training, ((), None, []))
            self._graph_aside = aside
            self._graph_mode = training
        return super()._call_cached_op(*args)

    def use_kernels(self, prelu_kernels: str, batchnorm_kernels: str) -> None:
        """Build this net's graphs with these PReLU and BatchNorm kernels ('auto', 'fused', 'stock';
        'original': stock) instead of those in force when its first graph is built; drops built graphs."""
        self._pinned_kernels = (checked("PReLU kernels", prelu_kernels),
                                checked("BatchNorm kernels", batchnorm_kernels))
        self._clear_cached_op()

    def _clear_cached_op(self):
        super()._clear_cached_op()
        self._graph_aside = {}
        self._graph_mode = None
        self._graph_kernels = None

    def export(self, path: str, epoch: int = 0, remove_amp_cast: bool = True) -> None:
        """HybridBlock.export with MXNet's LeakyReLU('prelu') and BatchNorm in the symbol file (readable
        without our library, one PRelu node each in ONNX; symbols.prelu.to_stock, symbols.batchnorm.to_stock)."""
        if not self._cached_graph:
            return super().export(path, epoch, remove_amp_cast)
        inputs, out = self._cached_graph
        self._cached_graph = inputs, batchnorm.to_stock(prelu.to_stock(out))
        try:
            super().export(path, epoch, remove_amp_cast)
        finally:
            self._cached_graph = inputs, out

    def hybrid_forward(self, F, x):
        x = F.cast(x, dtype="float32")
        x = (x - MEAN) * SCALE           # the first layer: exported models take raw 0..255 RGB
        if self.fp16:
            x = F.cast(x, dtype="float16")
        x = self.body(x)
        if self.fp16:
            x = F.cast(x, dtype="float32")
        return self.head(x)
