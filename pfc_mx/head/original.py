"""The head that replays insightface's MXNet partial_fc operator by operator (kernels="original").

The original (recognition/partial_fc/mxnet, memory_softmax.py and memory_module.py)
records L2Normalization of the raw embeddings and of the used centers, their dot
product, the margin on the one-hot target entries (arccos, × m1, + m2, cos, − m3
over the whole (N, S) matrix; the CosFace form when m1 = 1 and m2 = 0) and × s,
and differentiates that chain with MXNet's autograd from p − one_hot, where p is
its softmax with the row max and the row sum taken over every rank. This head runs
the same operators in the same order, so on one rank its loss and gradients are the
original's bit for bit when the global batch N is a power of two (the 1/N of our
mean loss is then exact; the original applies it in its optimizers instead);
tools/compare_original.py measures it (docs/REPRODUCE.md §5.5). On more ranks each
rank's softmax sum is rescaled to the global max instead of being recomputed after
the max's all-reduce: the same numbers within rounding.

It costs what the original costs: an (S, D) normalised copy of the centers and
autograd's (N, S) intermediates, and it is slower than the stock and fused heads,
which compute the closed-form gradient. Like the original it has no inter-class
filtering and no fallback where θ + m2 passes π, a target cosine that rounds to ±1
gives a non-finite gradient (the training loop then skips the step or stops the run),
and the loss it reports is the original's −mean(log(p_target + 1e-30)), whose terms
stop near 69.08 where the other heads report the whole cross-entropy.
Shapes as in pfc_mx.head.base: N rows of every rank, S used rows, D; float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import mxnet as mx
from mxnet import autograd

from pfc_mx.head.arrays import host_array
from pfc_mx.head.base import LOWEST, Step, Update, Workspace
from pfc_mx.head.stock import StockHead
from pfc_mx.margin import Margin
from pfc_mx.shard import StepPlan


@dataclass
class OriginalStep(Step):
    x: Optional[mx.nd.NDArray] = None       # (N, D) raw embeddings, with their gradient attached
    fc7: Optional[mx.nd.NDArray] = None     # (N, S) s·(margin) cosines, recorded
    onehot: Optional[mx.nd.NDArray] = None  # (N, S) 1 at each row's target column of this shard


class OriginalHead(StockHead):
    """Partial FC math of one shard as the original's recorded operators; the stock SGD update of the used rows."""

    name = "original"
    EMPTY_PARTS = (LOWEST, 0.0, 0.0)

    def __init__(self, weight: mx.nd.NDArray, momentum: mx.nd.NDArray, ctx: mx.Context, margin: Margin,
                 scale: float, threshold: float) -> None:
        if threshold > 0:
            raise ValueError("kernels='original' replays insightface's MXNet partial_fc, which has no inter-class "
                             "filtering; set interclass_filtering_threshold to 0 or kernels to 'stock' or 'fused'")
        super().__init__(weight, momentum, ctx, margin, scale, threshold)

    def inputs(self, x: mx.nd.NDArray) -> Tuple[mx.nd.NDArray, Optional[mx.nd.NDArray]]:
        """The raw embeddings: the recorded chain normalises them itself."""
        return x, None

    def loss(self, parts: mx.nd.NDArray) -> Tuple[mx.nd.NDArray, mx.nd.NDArray]:
        """parts (W, 3, N): each rank's row max, Σ exp(logit − that max) and target logit (0 off its shard).

        Returns (2, N) the global max and sum, and the original's loss −mean(log(p_target + 1e-30)).
        """
        top = mx.nd.max(parts[:, 0], axis=0)
        total = mx.nd.sum(parts[:, 1] * mx.nd.exp(mx.nd.broadcast_sub(parts[:, 0], top.reshape((1, -1)))), axis=0)
        p_target = mx.nd.exp(mx.nd.sum(parts[:, 2], axis=0) - top) / total
        return mx.nd.stack(top, total), -mx.nd.mean(mx.nd.log(p_target + 1e-30))

    def input_grad(self, dxn: mx.nd.NDArray, xn: mx.nd.NDArray, xnorm: Optional[mx.nd.NDArray],
                   rows: slice) -> mx.nd.NDArray:
        return dxn[rows]  # autograd went through the normalisation already

    def _more_buffers(self, n: int, s: int) -> Dict[str, mx.nd.NDArray]:
        return {}

    def _start(self, plan: StepPlan, n: int, ws: Workspace) -> OriginalStep:
        step = OriginalStep(plan, n, ws)
        step.index = None if plan.index is None else host_array(plan.index, "int64", self.store_ctx)
        w = self._used_rows(step.index, ws)
        if w is self.weight:  # a copy to record on: the weight itself is updated in place later
            self.weight.copyto(ws.rows)
        step.onehot = mx.nd.one_hot(host_array(plan.local_labels, "int32", self.ctx), depth=ws.s,
                                    on_value=1.0, off_value=0.0)
        return step

    def _forward(self, step: OriginalStep, x: mx.nd.NDArray) -> None:
        """memory_softmax.MarginLoss.forward, then the row max, the row sum and the target logit."""
        m1, m2, m3 = self.margin
        w, onehot = step.ws.rows, step.onehot
        x.attach_grad()
        w.attach_grad()
        with autograd.record():
            fc7 = mx.nd.dot(mx.nd.L2Normalization(x), mx.nd.L2Normalization(w), transpose_b=True)
            if m1 == 1.0 and m2 == 0.0:
                fc7 = fc7 - onehot * m3
            else:
                cos_t = fc7 * onehot
                t = mx.nd.arccos(cos_t)
                if m1 != 1.0:
                    t = t * m1
                if m2 != 0.0:
                    t = t + m2
                margin_cos = mx.nd.cos(t)
                if m3 != 0.0:
                    margin_cos = margin_cos - m3
                fc7 = fc7 + (margin_cos * onehot - cos_t)
            fc7 = fc7 * self.scale
        top = mx.nd.max(fc7, axis=1)
        total = mx.nd.sum(mx.nd.exp(mx.nd.broadcast_sub(fc7, top.reshape((-1, 1)))), axis=1)
        step.parts = mx.nd.stack(top, total, mx.nd.sum(fc7 * onehot, axis=1))
        step.x, step.fc7 = x, fc7

    def _backward(self, step: OriginalStep, lse: mx.nd.NDArray, x: mx.nd.NDArray) -> mx.nd.NDArray:
        """Autograd from (p − one_hot) / N; returns dL/dx (N, D) of the raw embeddings."""
        n = step.n
        p = mx.nd.broadcast_div(mx.nd.exp(mx.nd.broadcast_sub(step.fc7, lse[0].reshape((n, 1)))),
                                lse[1].reshape((n, 1)))
        step.fc7.backward(out_grad=(p - step.onehot) / n)
        return step.x.grad

    def _center_grad(self, step: OriginalStep) -> Update:
        return Update(step.index, step.ws.rows.grad)
