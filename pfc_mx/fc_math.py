"""Local math of the Partial FC head on one rank's sampled centers: pure functions on NDArrays.

Usage::

    xn, xnorm = normalize_rows(x)                       # (N, D), (N,)
    wnorm = row_norms(w_sampled)                        # (S,): centers stay unnormalised
    lse = local_log_normalizer(logits, probs)           # softmax into probs, (N,) log Σ exp
    lse_all = combine_log_normalizers(lse_ranks)        # (W, N) gathered from every rank → (N,)
    dx = normalize_backward(dxn, xn, xnorm)             # gradient through x / ‖x‖

No function here talks to other ranks: PartialFC calls them between its
collectives. Large (N, S) and (S, D) results are written into buffers the
caller owns (``out=``) so a training step allocates nothing of that size.
The fast paths lean on MXNet operators that are multi-threaded on the CPU
(softmax, argmax, global pooling, BLAS products) rather than element-wise
exp/max reductions, which are several times slower on this build.
"""
from __future__ import annotations

from typing import Optional, Tuple

import mxnet as mx
import numpy as np

L2_EPS = 1e-10  # MXNet L2Normalization's eps: x / sqrt(Σx² + eps)


def normalize_rows(x: mx.nd.NDArray, out: Optional[mx.nd.NDArray] = None,
                   norm: Optional[mx.nd.NDArray] = None) -> Tuple[mx.nd.NDArray, mx.nd.NDArray]:
    """(x / ν, ν) with ν = sqrt(Σ_d x² + 1e-10) per row; x (n, D) float32, ν (n,).

    Uses L2Normalization's second (hidden) output for ν: one pass over x.
    """
    n = x.shape[0]
    out = out if out is not None else mx.nd.empty(x.shape, ctx=x.context, dtype=x.dtype)
    norm = norm if norm is not None else mx.nd.empty((n,), ctx=x.context, dtype=x.dtype)
    mx.nd.L2Normalization(x, mode="instance", eps=L2_EPS, out=[out, norm])
    return out, norm


def row_norms(w: mx.nd.NDArray, out: Optional[mx.nd.NDArray] = None) -> mx.nd.NDArray:
    """ν = sqrt(Σ_d w² + 1e-10) per row of w (S, D) → (S,), the norm normalize_rows uses.

    An L2 global pooling reads w once and writes S values; normalising the
    centers themselves would write a second (S, D) array (several times slower
    here). Callers fold 1/ν into their (N, S) matrices instead.
    """
    s, d = w.shape
    pooled = mx.nd.Pooling(w.reshape((1, s, 1, d)), kernel=(1, d), pool_type="lp", p_value=2, global_pool=True)
    out = out if out is not None else mx.nd.empty((s,), ctx=w.context, dtype=w.dtype)
    return mx.nd.sqrt(mx.nd.square(pooled.reshape((s,))) + L2_EPS, out=out)


def local_log_normalizer(logits: mx.nd.NDArray, probs: mx.nd.NDArray) -> mx.nd.NDArray:
    """Write softmax(logits) into probs (N, S) and return lse = log Σ_j exp(logits_ij), (N,).

    lse = logits_ij − log probs_ij at j = the row's argmax (probs there = exp(max − lse) ≥ 1/S:
    no underflow). One argmax pass finds j; it costs half of two max reductions.
    """
    mx.nd.softmax(logits, axis=1, out=probs)
    top = mx.nd.argmax(logits, axis=1)
    return mx.nd.pick(logits, top, axis=1) - mx.nd.log(mx.nd.pick(probs, top, axis=1))


def combine_log_normalizers(lse_ranks: mx.nd.NDArray) -> mx.nd.NDArray:
    """Global log Σ exp (N,) from every rank's local one, (W, N): max_r + log Σ_r exp(lse_r − max_r)."""
    top = mx.nd.max(lse_ranks, axis=0)
    return top + mx.nd.log(mx.nd.sum(mx.nd.exp(mx.nd.broadcast_sub(lse_ranks, top.reshape((1, -1)))), axis=0))


def softmax_ce_loss(lse: mx.nd.NDArray, target_logit: mx.nd.NDArray) -> mx.nd.NDArray:
    """Mean cross-entropy −log p_target = mean(lse − target_logit) of (N,) vectors → (1,)."""
    return mx.nd.mean(lse - target_logit)


def scatter(a: mx.nd.NDArray, index: mx.nd.NDArray, values: mx.nd.NDArray) -> None:
    """a[index[0], index[1]] = values in place (what NDArray.__setitem__ does for index arrays)."""
    mx.nd._internal._scatter_set_nd(lhs=a, rhs=values, indices=index, shape=a.shape, out=a)


def normalize_backward(dy: mx.nd.NDArray, y: mx.nd.NDArray, norm: mx.nd.NDArray) -> mx.nd.NDArray:
    """Gradient w.r.t. x of y = x / ν(x) given dy: (dy − y·⟨y, dy⟩) / ν, rows (n, D)."""
    dot = mx.nd.sum(y * dy, axis=1, keepdims=True)
    return mx.nd.broadcast_div(dy - mx.nd.broadcast_mul(y, dot), norm.reshape((-1, 1)))


def target_input_grad(dcos_over_norm_t: mx.nd.NDArray, w: mx.nd.NDArray, rows: mx.nd.NDArray, cols: np.ndarray,
                      n: int) -> mx.nd.NDArray:
    """(N, D) gradient w.r.t. xn of K target entries: row rows[k] gets dcos_t[k] · w[cols[k]] / ν (rows unique).

    dcos_over_norm_t: (K,) dL/dcos of each target divided by its center's norm ν.
    """
    picked = mx.nd.take(w, mx.nd.array(cols, ctx=w.context, dtype="int64"))
    return mx.nd.scatter_nd(mx.nd.broadcast_mul(picked, dcos_over_norm_t.reshape((-1, 1))), rows.reshape((1, -1)),
                            shape=(n, w.shape[1]))


def target_center_terms(dcos_over_norm_t: mx.nd.NDArray, xn: mx.nd.NDArray, rows: mx.nd.NDArray,
                        cos_t: mx.nd.NDArray, cols: np.ndarray) -> Tuple[mx.nd.NDArray, mx.nd.NDArray, mx.nd.NDArray]:
    """Target entries summed per center: (columns (1, U), Σ D'·xn (U, D), Σ D'·cos (U,)).

    Several samples may share a class: their terms are added with a (U, K) 0/1 matrix.
    """
    unique, inverse = np.unique(cols, return_inverse=True)
    onehot = np.zeros((len(unique), len(cols)), np.float32)
    onehot[inverse, np.arange(len(cols))] = 1.0
    onehot = mx.nd.array(onehot, ctx=xn.context)
    xt = mx.nd.broadcast_mul(mx.nd.take(xn, rows), dcos_over_norm_t.reshape((-1, 1)))
    return (mx.nd.array(unique.reshape(1, -1), ctx=xn.context, dtype="int64"), mx.nd.dot(onehot, xt),
            mx.nd.dot(onehot, dcos_over_norm_t * cos_t))


def weight_grad_into(grad: mx.nd.NDArray, w: mx.nd.NDArray, wnorm: mx.nd.NDArray, p_over_norm_t: mx.nd.NDArray,
                     xg: mx.nd.NDArray, r: mx.nd.NDArray,
                     targets: Optional[Tuple[mx.nd.NDArray, mx.nd.NDArray, mx.nd.NDArray]] = None) -> mx.nd.NDArray:
    """Write dL/dw = D'ᵀ·xn − w·r/ν into grad (S, D), which may be w itself; D' = dL/dcos / ν, r = Σ_i D'·cos.

    w: the raw centers (S, D), wnorm: their norms ν (S,). Off the targets
    D' = P'·g (rows): p_over_norm_t = P'ᵀ (S, N) (transposed by the caller:
    MXNet's transposed products copy their operand), xg = g·xn (N, D) and r the
    (S,) sum of those entries. targets = target_center_terms(...) adds the
    target entries. From cos = xn·w / ν: dL/dw = (Σ_i dcos_i xn_i) / ν −
    w (Σ_i dcos_i cos_i) / ν². One scaling pass and one product accumulated
    into grad, no other (S, D) temporary.
    """
    if targets is not None:
        cols, x_sum, r_sum = targets
        scatter(r, cols, mx.nd.gather_nd(r, cols) + r_sum)
    mx.nd.broadcast_mul(w, (-r / wnorm).reshape((-1, 1)), out=grad)
    if targets is not None:
        scatter(grad, cols, mx.nd.gather_nd(grad, cols) + x_sum)
    mx.nd.linalg.gemm(p_over_norm_t, xg, grad, alpha=1.0, beta=1.0, out=grad)
    return grad
