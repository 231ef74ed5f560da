"""pfc_mx.margin against NumPy closed forms: values, autograd derivatives, edge angles, filtering."""
from __future__ import annotations

import math

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

from pfc_mx.margin import (ARCFACE, COSFACE, PRESETS, get_margin, margin_logits, target_logit,
                           target_logit_and_derivative)

COMBINED = (0.9, 0.4, 0.15)


def numpy_target(c, m1, m2, m3):
    """cos(m1·θ + m2) − m3 with the insightface fallback cos θ − m2·sin m2 − m3 past π (float64)."""
    theta = np.arccos(c)
    return np.where(m1 * theta + m2 <= math.pi, np.cos(m1 * theta + m2), c - m2 * math.sin(m2)) - m3


def numpy_derivative(c, m1, m2, m3):
    """d/dc of numpy_target: m1·sin(m1·θ + m2) / sin θ inside, 1 on the fallback."""
    theta = np.arccos(c)
    return np.where(m1 * theta + m2 <= math.pi, m1 * np.sin(m1 * theta + m2) / np.sin(theta), 1.0)


def test_presets_and_margin_specs():
    assert ARCFACE == (1.0, 0.5, 0.0) and COSFACE == (1.0, 0.0, 0.4)
    assert get_margin("arcface") == ARCFACE and get_margin("CosFace") == COSFACE
    assert get_margin([0.9, 0.4, 0.15]) == COMBINED
    assert set(PRESETS) == {"arcface", "cosface"}
    with pytest.raises(ValueError, match="arcface"):
        get_margin("sphereface")
    with pytest.raises(ValueError, match="m1, m2, m3"):
        get_margin([1.0, 0.5])
    with pytest.raises(ValueError, match="m1 > 0"):
        get_margin([0.0, 0.5, 0.0])


@pytest.mark.parametrize("inside, outside", [
    ((1.0, math.pi - 1e-9, 0.0), (1.0, math.pi, 0.0)),     # m2 < pi
    ((1.0, 0.0, 0.0), (1.0, -1e-9, 0.0)),                  # m2 >= 0
    ((1.0, 0.0, 1.0 - 1e-9), (1.0, 0.0, 1.0)),             # m3 < 1: a target logit can be positive
    ((1.0, 0.0, 0.0), (1.0, 0.0, -1e-9)),                  # m3 >= 0
    ((1e-9, 0.0, 0.0), (0.0, 0.0, 0.0)),                   # m1 > 0
    ((1e9, 0.0, 0.0), (math.inf, 0.0, 0.0)),               # m1 finite
])
def test_bounds_are_sharp(inside, outside):
    assert get_margin(inside) == inside
    with pytest.raises(ValueError, match="need m1 > 0, 0 <= m2 < pi, 0 <= m3 < 1"):
        get_margin(outside)


@pytest.mark.parametrize("margin", [ARCFACE, COSFACE, COMBINED, (1.35, 0.0, 0.0)])
def test_target_logit_and_autograd_derivative_match_closed_form(margin):
    # angles over the whole range, including θ + m2 > π (cos < −0.88 for ArcFace)
    c = np.linspace(-0.999, 0.999, 401)
    value, deriv = target_logit_and_derivative(mx.nd.array(c, dtype="float64"), margin)
    np.testing.assert_allclose(value.asnumpy(), numpy_target(c, *margin), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(deriv.asnumpy(), numpy_derivative(c, *margin), rtol=1e-9, atol=1e-9)
    # float32, as PartialFC calls it
    v32 = target_logit(mx.nd.array(c, dtype="float32"), *margin).asnumpy()
    np.testing.assert_allclose(v32, numpy_target(c.astype(np.float32).astype(np.float64), *margin), atol=2e-6)


def test_angle_past_pi_uses_the_monotone_fallback():
    # ArcFace: θ = 3.0 rad, θ + 0.5 > π: cos θ − 0.5·sin 0.5, which stays below the in-range values
    c = np.array([math.cos(3.0), math.cos(2.6)])
    value = target_logit(mx.nd.array(c, dtype="float64"), *ARCFACE).asnumpy()
    assert value[0] == pytest.approx(math.cos(3.0) - 0.5 * math.sin(0.5), abs=1e-12)
    assert value[1] == pytest.approx(math.cos(3.1), abs=1e-12)
    assert value[0] < value[1]


@pytest.mark.parametrize("margin", [ARCFACE, COSFACE, COMBINED])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cos_plus_minus_one_gives_finite_values_and_gradients(margin, dtype):
    c = mx.nd.array([1.0, -1.0, 1.0 - 1e-7, -1.0 + 1e-7], dtype=dtype)
    value, deriv = target_logit_and_derivative(c, margin)
    assert np.isfinite(value.asnumpy()).all() and np.isfinite(deriv.asnumpy()).all()
    # the clamp moves the value by at most s·m1·sin(m2)·1.4e-3 / s
    np.testing.assert_allclose(value.asnumpy()[:2], numpy_target(np.array([1.0, -1.0]), *margin), atol=2e-3)


def numpy_logits(cos, labels, margin, scale, threshold):
    out = np.where(cos > threshold, 0.0, cos) if threshold > 0 else cos.copy()
    rows = np.flatnonzero(labels >= 0)
    out[rows, labels[rows]] = numpy_target(cos[rows, labels[rows]], *margin)
    return scale * out


@pytest.mark.parametrize("threshold", [0.0, 0.3])
def test_margin_logits_and_their_gradient_match_numpy(threshold):
    rng = np.random.default_rng(0)
    cos = rng.uniform(-0.95, 0.95, (6, 9))
    labels = np.array([0, 4, -1, 8, 4, -1])  # −1: the target is in another shard
    s = 30.0
    x = mx.nd.array(cos, dtype="float64")
    x.attach_grad()
    with autograd.record():
        logits = margin_logits(x, mx.nd.array(labels), COMBINED, s, threshold)
    head = rng.standard_normal(cos.shape)
    logits.backward(mx.nd.array(head, dtype="float64"))
    np.testing.assert_allclose(logits.asnumpy(), numpy_logits(cos, labels, COMBINED, s, threshold), rtol=1e-12)
    expected = s * head * ((cos <= threshold) if threshold > 0 else 1.0)
    rows = np.flatnonzero(labels >= 0)
    expected[rows, labels[rows]] = s * head[rows, labels[rows]] * numpy_derivative(cos[rows, labels[rows]], *COMBINED)
    np.testing.assert_allclose(x.grad.asnumpy(), expected, rtol=1e-9, atol=1e-12)
    if threshold > 0:  # filtering acted on some non-target entry
        assert (logits.asnumpy() == 0).sum() > 0


def test_margin_rules_are_one_source_and_load_no_mxnet():
    """The config checks margins with pfc_mx.margin_rules; the head uses the same functions."""
    import subprocess
    import sys
    from pathlib import Path

    from pfc_mx import margin, margin_rules
    assert margin.get_margin is margin_rules.get_margin and margin.PRESETS is margin_rules.PRESETS
    code = "import sys, pfc_mx.margin_rules, pfc_mx.config; assert 'mxnet' not in sys.modules"
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, timeout=120).returncode == 0
