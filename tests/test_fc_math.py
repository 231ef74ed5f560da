"""pfc_mx.fc_math against NumPy float64 references: log-normalisers, norms, normalisation backward."""
from __future__ import annotations

import mxnet as mx
import numpy as np
from mxnet import autograd

from pfc_mx import fc_math as fm


def test_local_log_normalizer_equals_float64_logsumexp_and_writes_the_softmax():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((6, 1000)) * 30).astype(np.float32)
    x[1] = 64.0                 # all tied: argmax is any column
    x[2, :] = -500.0            # far below zero
    x[2, 7] = 10.0
    x[3, :999] = -1e30          # one column carries the whole row
    probs = mx.nd.empty(x.shape)
    lse = fm.local_log_normalizer(mx.nd.array(x), probs).asnumpy()
    x64 = x.astype(np.float64)
    m = x64.max(axis=1, keepdims=True)
    ref = (m + np.log(np.exp(x64 - m).sum(axis=1, keepdims=True))).ravel()
    np.testing.assert_allclose(lse, ref, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(probs.asnumpy(), np.exp(x64 - ref[:, None]), rtol=1e-5, atol=1e-7)


def test_combined_log_normalizers_of_shards_equal_the_whole_row():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((4, 300)) * 20).astype(np.float32)
    parts = [fm.local_log_normalizer(mx.nd.array(x[:, a:b]), mx.nd.empty((4, b - a))) for a, b in ((0, 100), (100, 300))]
    parts.append(mx.nd.full((4,), float(np.finfo(np.float32).min)))  # a rank without columns
    lse = fm.combine_log_normalizers(mx.nd.stack(*parts)).asnumpy()
    whole = fm.local_log_normalizer(mx.nd.array(x), mx.nd.empty(x.shape)).asnumpy()
    np.testing.assert_allclose(lse, whole, rtol=1e-6)


def test_row_norms_and_normalize_rows_match_numpy():
    w = np.random.default_rng(2).standard_normal((50, 16)).astype(np.float32)
    w[3] = 0.0
    ref = np.sqrt((w.astype(np.float64) ** 2).sum(axis=1) + fm.L2_EPS)
    np.testing.assert_allclose(fm.row_norms(mx.nd.array(w)).asnumpy(), ref, rtol=1e-6)
    xn, norm = fm.normalize_rows(mx.nd.array(w))
    np.testing.assert_allclose(norm.asnumpy(), ref, rtol=1e-6)
    np.testing.assert_allclose(xn.asnumpy(), w / ref[:, None], rtol=1e-6, atol=1e-7)


def test_normalize_backward_equals_autograd_through_l2_normalisation():
    rng = np.random.default_rng(3)
    x = mx.nd.array(rng.standard_normal((8, 12)).astype(np.float32))
    dy = mx.nd.array(rng.standard_normal((8, 12)).astype(np.float32))
    x.attach_grad()
    with autograd.record():
        y = x / mx.nd.sqrt(mx.nd.sum(x * x, axis=1, keepdims=True) + fm.L2_EPS)
    y.backward(dy)
    xn, norm = fm.normalize_rows(x)
    np.testing.assert_allclose(fm.normalize_backward(dy, xn, norm).asnumpy(), x.grad.asnumpy(), rtol=1e-5,
                               atol=1e-6)
