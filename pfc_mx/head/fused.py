"""The head with the fused CPU operators of pfc_mx.kernels (C++, built once per machine).

One pass gathers the used rows already normalised, one does margin + softmax +
log-normaliser over the logits in place (no pass over N × S after it: off the
targets dL/dcos is a row factor times that softmax, so the factors go on the
N × D side of the products), one combines the ranks' sums into the loss, and
the update assembles each row's gradient (target entries, the term through
w / ν) inside its own pass; around them only the three matrix products and the
gradient through the embeddings' normalisation. The (N, S) logits are
overwritten by the softmax, so the workspace holds no second N × S buffer.
Shapes as in pfc_mx.head.base (N rows of every rank, S used rows, D); float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import mxnet as mx

from pfc_mx.head.arrays import host_array
from pfc_mx.head.base import HeadMath, Step, Update, Workspace
from pfc_mx.shard import StepPlan


@dataclass
class FusedStep(Step):
    tcol: Optional[mx.nd.NDArray] = None       # (N,) int64 column of each row's class among the used rows, −1: none
    stats: Optional[mx.nd.NDArray] = None      # (3, N) per-row sums the softmax kernel leaves for the backward
    expo_rows: Optional[mx.nd.NDArray] = None  # (N, D) softmax · ŵ (queued in forward)
    xn: Optional[mx.nd.NDArray] = None         # backward → center gradient: (N, D) unit embeddings,
    xs: Optional[mx.nd.NDArray] = None         # (N, D) g·xn, the row factors applied,
    tcoef: Optional[mx.nd.NDArray] = None      # (N,) dL/dcos of each target entry


@dataclass
class FusedUpdate(Update):
    """grad: (S, D) expoᵀ·(g·xn) only; the update adds the target entries and the term through w / ν."""
    wnorm: Optional[mx.nd.NDArray] = None      # (S,) ν of the used rows
    xn: Optional[mx.nd.NDArray] = None         # (N, D)
    tcol: Optional[mx.nd.NDArray] = None       # (N,)
    tcoef: Optional[mx.nd.NDArray] = None      # (N,)


class FusedHead(HeadMath):
    """Partial FC math of one shard with the fused kernels (CPU contexts only; pfc_mx.kernels.load() first)."""

    name = "fused"

    def loss(self, parts: mx.nd.NDArray) -> Tuple[mx.nd.NDArray, mx.nd.NDArray]:
        lse, loss = mx.nd.pfc_softmax_loss(parts)
        return lse, loss

    def input_grad(self, dxn: mx.nd.NDArray, xn: mx.nd.NDArray, xnorm: Optional[mx.nd.NDArray],
                   rows: slice) -> mx.nd.NDArray:
        return mx.nd.pfc_normalize_grad(dxn[rows], xn[rows], xnorm[rows])

    def _start(self, plan: StepPlan, n: int, ws: Workspace) -> FusedStep:
        """The used rows gathered already normalised into ws.rows, in one pass.

        Unlike the stock path the used centers are always copied, normalised (at
        rate 1 the stock path reads the weight in place instead), so the (N, S)
        logits need no division.
        """
        step = FusedStep(plan, n, ws)
        if plan.index is not None:
            step.index = host_array(plan.index, "int64", self.ctx)
        else:  # every row, kept with the workspace
            if ws.all_rows is None:
                ws.all_rows = mx.nd.arange(self.num_local, ctx=self.ctx, dtype="int64")
            step.index = ws.all_rows
        mx.nd.pfc_gather_normalize(self.weight, step.index, out=[ws.rows, ws.wnorm])
        step.tcol = host_array(plan.local_labels, "int64", self.ctx)  # -1: not in this shard
        step.parts, step.stats = mx.nd.empty((2, n), ctx=self.ctx), mx.nd.empty((3, n), ctx=self.ctx)
        return step

    def _forward(self, step: FusedStep, xn: mx.nd.NDArray) -> None:
        """Margin, softmax and its sums in one pass, in place.

        The product expo·ŵ of the embedding gradient is queued here too: it needs
        only this rank's softmax, so it runs while the ranks gather their parts.
        """
        ws = step.ws
        logits = mx.nd.linalg.gemm2(xn, ws.rows, transpose_b=True, alpha=self.scale, out=ws.logits)  # s·cos
        m1, m2, m3 = self.margin
        expo = mx.nd.pfc_margin_softmax(logits, step.tcol, m1=m1, m2=m2, m3=m3, scale=self.scale,
                                        filter=self.threshold > 0, threshold=self.threshold * self.scale,
                                        out=[logits, step.parts, step.stats])[0]
        step.expo_rows = mx.nd.dot(expo, ws.rows)

    def _backward(self, step: FusedStep, lse: mx.nd.NDArray, xn: mx.nd.NDArray) -> mx.nd.NDArray:
        """No pass over (N, S) after the softmax.

        Off the targets dL/dcos = g_i·expo (row factors g from the global lse), so
        dxn = g·(expo·ŵ) + the target entries; the center product G = expoᵀ·(g·xn)
        goes to ws.rows in _center_grad (ŵ is spent by then).
        """
        dxn, step.xs, step.tcoef = mx.nd.pfc_softmax_scale(step.expo_rows, step.ws.rows, xn, step.parts, step.stats,
                                                           lse, step.tcol, scale=self.scale)
        step.xn = xn
        return dxn

    def _center_grad(self, step: FusedStep) -> FusedUpdate:
        ws = step.ws
        grad = mx.nd.linalg.gemm2(ws.logits, step.xs, transpose_a=True, out=ws.rows)
        return FusedUpdate(step.index, grad, wnorm=ws.wnorm, xn=step.xn, tcol=step.tcol, tcoef=step.tcoef)

    def _update(self, update: FusedUpdate, lr: float, momentum: float, wd: float) -> None:
        """The gradient assembled inside the update's pass over the used rows (pfc_sparse_sgd)."""
        mx.nd.pfc_sparse_sgd(self.weight, update.grad, self.momentum, update.index, update.wnorm, update.xn,
                             update.tcol, update.tcoef, lr=float(lr), momentum=float(momentum or 0.0), wd=float(wd),
                             normalize=True, out=self.weight)
