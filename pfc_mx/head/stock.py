"""The head with stock MXNet operators (GPUs, or CPUs where the fused kernels cannot be built).

Centers are never normalised into a copy: their norms ν come from one reading
pass and 1/ν is folded into the (N, S) matrices. Besides the shared workspace
this path keeps the softmax in an (N, S) buffer (later the logits' gradient)
and, with inter-class filtering, an (N, S) mask; at rate 1 with the centers on
the training context it reads the weight in place instead of gathering it.
Shapes as in pfc_mx.head.base: N rows of every rank, S used rows, T rows of
the batch whose class is in this shard, D the embedding size; float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import mxnet as mx
import numpy as np

from pfc_mx import fc_math as fm
from pfc_mx.head.arrays import host_array
from pfc_mx.head.base import HeadMath, Step, Update, Workspace
from pfc_mx.margin import keep_mask, target_logit_and_derivative
from pfc_mx.shard import StepPlan

UPDATE_CHUNK_BYTES = 4 << 20  # rows per sparse-update call: 4 MiB of gradient


@dataclass
class StockStep(Step):
    w: Optional[mx.nd.NDArray] = None         # (S, D) the used centers: ws.rows, or the weight itself
    trows: Optional[mx.nd.NDArray] = None     # (T,) int64 batch rows whose class is in this shard; None: T = 0
    tindex: Optional[mx.nd.NDArray] = None    # (2, T) int64 (row, column) of their target entries
    cos_t: Optional[mx.nd.NDArray] = None     # (T,) target cosines
    logit_t: Optional[mx.nd.NDArray] = None   # (T,) target logits s·(cos(m1·θ + m2) − m3)
    dlogit_t: Optional[mx.nd.NDArray] = None  # (T,) their derivative by the cosine, over s
    lse: Optional[mx.nd.NDArray] = None       # (N,) local log-normaliser
    xn: Optional[mx.nd.NDArray] = None        # backward → center gradient: (N, D) unit embeddings,
    g: Optional[mx.nd.NDArray] = None         # (N,) row factors of dL/dcos,
    r: Optional[mx.nd.NDArray] = None         # (S,) Σ_i dL/dcos·cos / ν off the targets,
    targets: Optional[Tuple[mx.nd.NDArray, mx.nd.NDArray, mx.nd.NDArray]] = None  # fm.target_center_terms


class StockHead(HeadMath):
    """Partial FC math of one shard with stock MXNet operators."""

    name = "stock"

    def loss(self, parts: mx.nd.NDArray) -> Tuple[mx.nd.NDArray, mx.nd.NDArray]:
        lse = fm.combine_log_normalizers(parts[:, 0])
        return lse, fm.softmax_ce_loss(lse, mx.nd.sum(parts[:, 1], axis=0))

    def input_grad(self, dxn: mx.nd.NDArray, xn: mx.nd.NDArray, xnorm: Optional[mx.nd.NDArray],
                   rows: slice) -> mx.nd.NDArray:
        return fm.normalize_backward(dxn[rows], xn[rows], xnorm[rows])

    def _more_buffers(self, n: int, s: int) -> Dict[str, mx.nd.NDArray]:
        out = {"probs": mx.nd.empty((n, s), ctx=self.ctx)}
        if self.threshold > 0:
            out["keep"] = mx.nd.empty((n, s), ctx=self.ctx)
        return out

    def _start(self, plan: StepPlan, n: int, ws: Workspace) -> StockStep:
        step = StockStep(plan, n, ws)
        step.index = None if plan.index is None else host_array(plan.index, "int64", self.store_ctx)
        step.w = self._used_rows(step.index, ws)
        fm.row_norms(step.w, out=ws.wnorm)
        return step

    def _used_rows(self, idx: Optional[mx.nd.NDArray], ws: Workspace) -> mx.nd.NDArray:
        """weight[idx] on the training context (idx: int64 rows on the centers' context): the weight
        itself when every row (idx None) is used on-device, else a copy in ws.rows."""
        if idx is None:
            return self.weight if self.store_ctx == self.ctx else self.weight.copyto(ws.rows)
        if self.store_ctx == self.ctx:
            return mx.nd.take(self.weight, idx, out=ws.rows)
        return mx.nd.take(self.weight, idx).copyto(ws.rows)

    def _forward(self, step: StockStep, xn: mx.nd.NDArray) -> None:
        """Logits s·cos on the used rows, the margin on the targets, filtering, softmax into ws.probs."""
        ws, n, s, plan = step.ws, step.n, step.ws.s, step.plan
        logits = mx.nd.dot(xn * self.scale, step.w, transpose_b=True, out=ws.logits)
        mx.nd.broadcast_div(logits, ws.wnorm.reshape((1, s)), out=logits)  # s·cos
        rows = np.flatnonzero(plan.local_labels >= 0)
        if len(rows):
            step.trows = host_array(rows, "int64", self.ctx)
            step.tindex = host_array(np.stack([rows, plan.local_labels[rows]]), "int64", self.ctx)
            step.cos_t = mx.nd.gather_nd(logits, step.tindex) / self.scale
            f, df = target_logit_and_derivative(step.cos_t, self.margin)
            step.logit_t, step.dlogit_t = f * self.scale, df
        if self.threshold > 0:
            keep_mask(logits, self.threshold * self.scale, out=ws.keep)
            mx.nd.elemwise_mul(logits, ws.keep, out=logits)
        if len(rows):
            fm.scatter(logits, step.tindex, step.logit_t)
            target = mx.nd.scatter_nd(step.logit_t, step.trows.reshape((1, -1)), shape=(n,))
        else:
            target = mx.nd.zeros((n,), ctx=self.ctx)
        step.lse = fm.local_log_normalizer(logits, ws.probs)
        step.parts = mx.nd.stack(step.lse, target)

    def _backward(self, step: StockStep, lse: mx.nd.NDArray, xn: mx.nd.NDArray) -> mx.nd.NDArray:
        """dL/d xn (N, D); the row factors and target terms of the center gradient stay in step."""
        ws, w, n, s, plan = step.ws, step.w, step.n, step.ws.s, step.plan
        logits, probs, wnorm = ws.logits, ws.probs, ws.wnorm
        # off the targets dL/dcos = g·P (P: local softmax, g: this rank's share of the row · s/N); the row
        # factor g goes into xn, into the product for dxn and into the sum for r, never over the (N, S) matrix
        g = mx.nd.exp(step.lse - lse) * (self.scale / n)
        if self.threshold > 0:
            mx.nd.elemwise_mul(probs, ws.keep, out=probs)
        if step.trows is not None:  # target entries are added exactly below
            fm.scatter(probs, step.tindex, mx.nd.zeros_like(step.cos_t))
        mx.nd.broadcast_div(probs, wnorm.reshape((1, s)), out=probs)  # P / ν
        dxn = mx.nd.broadcast_mul(mx.nd.dot(probs, w), g.reshape((n, 1)))  # P·wn = (P / ν)·w
        mx.nd.elemwise_mul(logits, probs, out=logits)                 # s·cos · P / ν (0 at targets)
        step.r = mx.nd.dot((g / self.scale).reshape((1, n)), logits).reshape((s,))
        if step.trows is not None:
            p_t = mx.nd.exp(step.logit_t - mx.nd.take(lse, step.trows))
            dcos_t = step.dlogit_t * (p_t - 1) * (self.scale / n)
            cols = plan.local_labels[plan.local_labels >= 0]
            dcos_t = dcos_t / mx.nd.take(wnorm, step.tindex[1])
            dxn = dxn + fm.target_input_grad(dcos_t, w, step.trows, cols, n)
            step.targets = fm.target_center_terms(dcos_t, xn, step.trows, step.cos_t, cols)
        step.xn, step.g = xn, g
        return dxn

    def _center_grad(self, step: StockStep) -> Update:
        ws, n, s = step.ws, step.n, step.ws.s
        probs_t = mx.nd.transpose(ws.probs, out=ws.logits.reshape((s, n)))  # logits are spent: P'ᵀ (S, N) there
        # the gradient overwrites the gathered rows (dead after this) or fills the buffer when w is the weight
        grad = fm.weight_grad_into(ws.rows, step.w, ws.wnorm, probs_t, step.xn * step.g.reshape((n, 1)), step.r,
                                   step.targets)
        return Update(step.index, grad)

    def _update(self, update: Update, lr: float, momentum: float, wd: float) -> None:
        """MXNet's sgd(_mom)_update (mom = momentum·mom − lr·(grad + wd·w); w += mom, rescale_grad 1).

        Lazy on a row-sparse gradient, in chunks, so that unused rows keep weight and
        momentum bit for bit (MXNet logs once that lazy updates differ from dense ones:
        that difference is the point); dense, in place, when every row is used on-device.
        """
        index, grad = update.index, update.grad
        kw = dict(lr=float(lr), wd=float(wd), rescale_grad=1.0)
        if momentum:
            kw["momentum"] = float(momentum)
        if index is None and self.store_ctx == self.ctx:  # every row: the dense operator, in place
            if momentum:
                mx.nd.sgd_mom_update(self.weight, grad, self.momentum, out=self.weight, **kw)
            else:
                mx.nd.sgd_update(self.weight, grad, out=self.weight, **kw)
            return
        chunk = max(1, UPDATE_CHUNK_BYTES // (4 * self.embedding_size))
        shape = (self.num_local, self.embedding_size)
        for a in range(0, grad.shape[0], chunk):
            hi = min(a + chunk, grad.shape[0])
            rows = (index[a:hi] if index is not None
                    else mx.nd.arange(a, hi, ctx=self.store_ctx, dtype="int64"))
            rsp = mx.nd.sparse.row_sparse_array((grad[a:hi].as_in_context(self.store_ctx), rows), shape=shape,
                                                ctx=self.store_ctx)
            if momentum:
                mx.nd.sgd_mom_update(self.weight, rsp, self.momentum, out=self.weight, lazy_update=True, **kw)
            else:
                mx.nd.sgd_update(self.weight, rsp, out=self.weight, lazy_update=True, **kw)
