"""Combined margin (m1, m2, m3) with scale s, and inter-class filtering: pure NDArray functions.

Usage::

    m = get_margin("arcface")                      # (1.0, 0.5, 0.0)
    f = target_logit(cos_t, *m)                    # cos(m1·θ + m2) − m3, θ = arccos(cos_t)
    logits = margin_logits(cos, labels, m, 64.0)   # (N, S): s·cos, target entries s·f

The target logit of a sample is ``cos(m1·θ + m2) − m3``; every other logit is
``cos``; all are multiplied by the scale s. ArcFace is (1, 0.5, 0), CosFace is
(1, 0, 0.4), SphereFace-like margins use m1 > 1. Inter-class filtering (CVPR
2022, "Killing Two Birds with One Stone") sets non-target cosines above a
threshold to zero, which drops probable label-noise classes from the softmax.

Numerical treatment (insightface's, documented here because it changes values):

* θ + m2 > π. Past π, cos(m1·θ + m2) turns upward and the penalty would reward a
  worse angle. As in insightface's MXNet `train.py` (`cos_t − mm`) and
  arcface_torch's ArcFace (`target_logit − sinmm`), the target logit there is
  the linear fallback ``cos θ − m2·sin(m2) − m3`` (the test is m1·θ + m2 > π).
* cos = ±1. arccos has an infinite derivative at ±1. cos is clamped to
  [−1 + 1e-6, 1 − 1e-6] before arccos with a straight-through clamp (the value
  is clamped, the gradient passes), so value and gradient stay finite; the value
  moves only for |θ| < 0.08° (at most ≈ s·m1·sin(m2)·1.4e-3 on one logit).
* CosFace-type margins (m1 = 1, m2 = 0) never call arccos: ``cos − m3`` exactly.

Presets and bounds (get_margin, margin_problem) live in pfc_mx.margin_rules, which the
config reads without loading MXNet; they are imported here for the head's callers.

All functions are differentiable with mx.autograd; they never read a config.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import mxnet as mx
from mxnet import autograd

from pfc_mx.margin_rules import (ARCFACE, BOUNDS, COSFACE, M2_LIMIT, M3_LIMIT, PRESETS, Margin, get_margin,
                                 margin_problem)

__all__ = ["ARCFACE", "BOUNDS", "COSFACE", "M2_LIMIT", "M3_LIMIT", "PRESETS", "Margin", "get_margin",
           "margin_problem", "target_logit", "target_logit_and_derivative", "keep_mask", "margin_logits"]

ACOS_EPS = 1e-6  # clamp of cos before arccos


def _straight_through_clamp(x: mx.nd.NDArray, lo: float, hi: float) -> mx.nd.NDArray:
    """clip(x, lo, hi) in value, identity in gradient."""
    return x + (mx.nd.clip(x, lo, hi) - x).detach()


def target_logit(cos_t: mx.nd.NDArray, m1: float, m2: float, m3: float) -> mx.nd.NDArray:
    """Unscaled target logit cos(m1·θ + m2) − m3 of target cosines cos_t (any shape, float).

    Same shape and dtype as cos_t; see the module docstring for the θ + m2 > π
    fallback and the clamp at cos = ±1.
    """
    if m1 == 1.0 and m2 == 0.0:
        return cos_t - m3
    theta = mx.nd.arccos(_straight_through_clamp(cos_t, -1.0 + ACOS_EPS, 1.0 - ACOS_EPS))
    phi = theta * m1 + m2
    inside = (phi <= math.pi).detach()
    fallback = cos_t - m2 * math.sin(m2)
    return mx.nd.where(inside, mx.nd.cos(phi), fallback) - m3


def target_logit_and_derivative(cos_t: mx.nd.NDArray, margin: Margin) -> Tuple[mx.nd.NDArray, mx.nd.NDArray]:
    """(f(cos_t), f'(cos_t)) of target_logit, element-wise, by autograd on the (K,) vector."""
    c = cos_t.copy()
    c.attach_grad()
    with autograd.record(train_mode=False):
        value = target_logit(c, *margin)
    value.backward()
    return value.detach(), c.grad


def keep_mask(cos: mx.nd.NDArray, threshold: float, out: Optional[mx.nd.NDArray] = None) -> mx.nd.NDArray:
    """Inter-class filtering mask: 1.0 where cos <= threshold (kept), 0.0 where it is filtered.

    Target entries must be exempted by the caller (they get the margin logit).
    """
    return mx.nd._internal._lesser_equal_scalar(cos, scalar=float(threshold), out=out)


def margin_logits(cos: mx.nd.NDArray, labels: mx.nd.NDArray, margin: Margin, scale: float,
                  threshold: float = 0.0) -> mx.nd.NDArray:
    """Scaled logits of a (N, S) cosine matrix; differentiable w.r.t. cos.

    labels: (N,) column of each row's target, −1 for a row whose target is not
    among these S columns. Non-target entries are s·cos (0 where cos > threshold
    when threshold > 0); target entries s·target_logit(cos). Allocates (N, S)
    arrays: a reference-sized helper, PartialFC works on preallocated buffers.
    """
    labels = labels.astype("int64")
    has = labels >= 0
    column = mx.nd.maximum(labels, 0)
    onehot = mx.nd.one_hot(column, cos.shape[1], dtype=cos.dtype) * has.astype(cos.dtype).reshape((-1, 1))
    onehot = onehot.detach()
    others = cos
    if threshold > 0:
        others = cos * keep_mask(cos, threshold).detach()
    target = target_logit(mx.nd.pick(cos, column, axis=1), *margin)
    return (others * (1 - onehot) + onehot * target.reshape((-1, 1))) * scale
