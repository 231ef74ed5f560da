"""pfc_mx.kernels: each fused operator against a float64 NumPy reference or MXNet's own operator, and the build."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from pfc_mx import kernels
from pfc_mx.margin import target_logit_and_derivative
from pfc_mx.head import PartialFC
from tests.center_grad import center_grad

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def loaded():
    """The kernels must build on every machine the suite runs on (setup installs g++): fail, never skip."""
    assert kernels.load(), kernels.unavailable_reason()


def effective_logits(x, target, target_logit, threshold):
    """float64 logits as the softmax sees them: target entries replaced, filtered entries 0."""
    eff = x.astype(np.float64)
    if threshold is not None:
        eff[eff > threshold] = 0.0
    rows = np.flatnonzero(target >= 0)
    eff[rows, target[rows]] = target_logit[rows]
    return eff


def test_gather_normalize_equals_numpy_and_rejects_bad_rows():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((300, 37)).astype(np.float32)
    w[5] = 0.0  # a zero row: norm sqrt(1e-10), row stays 0
    index = np.array([5, 299, 0, 17, 17, 123], np.int64)  # unsorted, repeated
    rows, norm = mx.nd.pfc_gather_normalize(mx.nd.array(w), mx.nd.array(index, dtype="int64"))
    ref_norm = np.sqrt((w[index].astype(np.float64) ** 2).sum(1) + 1e-10)
    np.testing.assert_allclose(norm.asnumpy(), ref_norm, rtol=1e-6)
    np.testing.assert_allclose(rows.asnumpy(), w[index] / ref_norm[:, None], rtol=1e-6, atol=1e-7)
    with pytest.raises(mx.base.MXNetError, match=r"index 300 at position 1 is outside \[0, 300\)"):
        mx.nd.pfc_gather_normalize(mx.nd.array(w), mx.nd.array([2, 300], dtype="int64"))[0].wait_to_read()


def margin_softmax(x, target, margin=(1.0, 0.0, 0.0), scale=1.0, threshold=None):
    """The kernel on NumPy inputs → expo, (lse, target logit), (rowmax, cos_t, f') as NumPy arrays."""
    m1, m2, m3 = margin
    outs = mx.nd.pfc_margin_softmax(mx.nd.array(x), mx.nd.array(target, dtype="int64"), m1=m1, m2=m2, m3=m3,
                                    scale=scale, filter=threshold is not None, threshold=threshold or 0.0)
    return [o.asnumpy() for o in outs]


@pytest.mark.parametrize("margin", [(1.0, 0.0, 0.0), (1.0, 0.5, 0.0), (0.9, 0.4, 0.15), (1.0, 0.0, 0.4)])
@pytest.mark.parametrize("threshold", [None, 9.0])
def test_margin_softmax_equals_float64_softmax_with_the_margin_of_margin_py(margin, threshold):
    rng = np.random.default_rng(1)
    n, s, scale = 10, 1000, 64.0
    x = (rng.uniform(-1, 1, (n, s)) * scale).astype(np.float32)
    x[2, :] = -scale  # exp of every other entry far below the target's
    target = np.array([3, -1, 999, 0, 500, -1, 7, 7, 998, 11], np.int64)
    x[2, 999], x[4, 500], x[9, 11] = scale, -scale, 0.99 * scale  # cos = 1 (clamped), -1 (past pi), near 1
    e, (lse, tlogit), (rowmax, cos_t, df) = margin_softmax(x, target, margin, scale, threshold)
    rows = np.flatnonzero(target >= 0)
    ref_cos = x[rows, target[rows]] / np.float32(scale)
    c = mx.nd.array(ref_cos)
    ref_f, ref_df = target_logit_and_derivative(c, margin)  # margin.py's autograd: the independent reference
    np.testing.assert_allclose(cos_t[rows], ref_cos, rtol=0, atol=0)
    np.testing.assert_allclose(tlogit[rows], ref_f.asnumpy() * scale, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(df[rows], ref_df.asnumpy(), rtol=1e-4, atol=1e-6)
    assert not tlogit[target < 0].any() and not cos_t[target < 0].any() and not df[target < 0].any()
    eff = effective_logits(x, target, tlogit, threshold)
    m = eff.max(1)
    np.testing.assert_array_equal(rowmax, m.astype(np.float32))
    # exp of the float32 difference (the rounding of x - m is the input's, not the kernel's); exp(-87) is the floor
    diff = (eff.astype(np.float32) - m[:, None].astype(np.float32)).astype(np.float64)
    ref_e = np.maximum(np.exp(diff), np.exp(-87.0))
    if threshold is not None:  # dL/dcos of a filtered entry is 0, not a multiple of its exp
        ref_e[x > threshold] = 0.0
    ref_e[rows, target[rows]] = 0.0  # the target entry's gradient has its own factor
    np.testing.assert_allclose(e, ref_e, rtol=2e-7, atol=1e-44)
    np.testing.assert_allclose(lse, m + np.log(np.exp(eff - m[:, None]).sum(1)), rtol=1e-6)


def test_margin_softmax_exp_is_accurate_over_the_whole_range_and_keeps_nan():
    z = -np.linspace(0, 87, 200001).astype(np.float32)
    x = np.stack([z, z, z])
    x[1, 100] = np.nan
    x[2, 5] = np.nan  # a NaN target cosine
    e, (lse, _), _ = margin_softmax(x, np.array([-1, -1, 5]), margin=(1.0, 0.5, 0.0))
    ref = np.exp(z.astype(np.float64))
    assert (np.abs(e[0] - ref) / ref).max() < 2e-7
    assert np.isfinite(lse[0]) and np.isnan(lse[1:]).all()  # a NaN logit makes its row NaN


def test_softmax_loss_combines_the_ranks_in_float64():
    rng = np.random.default_rng(6)
    w, n = 3, 50
    parts = np.stack([rng.uniform(-5, 90, (w, n)), rng.uniform(-60, 60, (w, n))], axis=1).astype(np.float32)
    parts[1, 0, :7] = np.finfo(np.float32).min  # a rank without columns for some rows
    parts[2, 0, 9] = np.nan
    lse, loss = (o.asnumpy() for o in mx.nd.pfc_softmax_loss(mx.nd.array(parts)))
    p = parts.astype(np.float64)
    top = p[:, 0].max(0)
    ref = top + np.log(np.exp(p[:, 0] - top).sum(0))
    ref[9] = np.nan
    np.testing.assert_allclose(lse, ref, rtol=1e-7)
    assert np.isnan(loss[0])
    parts[2, 0, 9] = 1.0
    lse, loss = (o.asnumpy() for o in mx.nd.pfc_softmax_loss(mx.nd.array(parts)))
    top = parts[:, 0].astype(np.float64).max(0)
    ref = top + np.log(np.exp(parts[:, 0] - top).sum(0))
    np.testing.assert_allclose(loss[0], np.mean(ref - parts[:, 1].astype(np.float64).sum(0)), rtol=1e-6)


def test_margin_softmax_in_place_equals_a_separate_output():
    rng = np.random.default_rng(8)
    x = (rng.uniform(-1, 1, (6, 300)) * 16).astype(np.float32)
    target = np.array([0, -1, 299, 5, 5, -1], np.int64)
    separate = margin_softmax(x, target, (1.0, 0.5, 0.0), 16.0, 4.0)
    logits = mx.nd.array(x)
    outs = mx.nd.pfc_margin_softmax(logits, mx.nd.array(target, dtype="int64"), m1=1.0, m2=0.5, m3=0.0, scale=16.0,
                                    filter=True, threshold=4.0, out=[logits, mx.nd.empty((2, 6)), mx.nd.empty((3, 6))])
    for ours, ref in zip([logits.asnumpy()] + [o.asnumpy() for o in outs[1:]], separate):
        np.testing.assert_array_equal(ours, ref)


def test_softmax_scale_equals_numpy():
    rng = np.random.default_rng(2)
    n, s, d, scale = 7, 513, 33, 8.0
    expo_rows, xn = rng.standard_normal((2, n, d)).astype(np.float32)
    rows = rng.standard_normal((s, d)).astype(np.float32)
    target = np.array([0, -1, 512, 256, 256, 3, -1], np.int64)
    lse = rng.uniform(5, 9, n).astype(np.float32)
    parts = np.stack([lse - 1, rng.uniform(-8, 8, n)]).astype(np.float32)
    stats = np.stack([lse - 2, rng.uniform(-1, 1, n), rng.uniform(0.5, 2, n)]).astype(np.float32)
    stats[2, target < 0] = 0.0  # f' is 0 without a target (pfc_margin_softmax)
    dxn, xs, tcoef = (o.asnumpy() for o in mx.nd.pfc_softmax_scale(
        mx.nd.array(expo_rows), mx.nd.array(rows), mx.nd.array(xn), mx.nd.array(parts), mx.nd.array(stats),
        mx.nd.array(lse), mx.nd.array(target, dtype="int64"), scale=scale))
    c = scale / n
    g = np.exp(stats[0].astype(np.float64) - lse) * c
    ref_t = np.where(target >= 0, stats[2] * (np.exp(parts[1].astype(np.float64) - lse) - 1) * c, 0.0)
    ref_dxn = g[:, None] * expo_rows + ref_t[:, None] * rows[np.maximum(target, 0)] * (target >= 0)[:, None]
    np.testing.assert_allclose(tcoef, ref_t, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(xs, g[:, None] * xn, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(dxn, ref_dxn, rtol=1e-5, atol=1e-6)


def test_normalize_grad_equals_numpy_on_row_views():
    rng = np.random.default_rng(7)
    dy, x = rng.standard_normal((2, 9, 33)).astype(np.float32)
    norm = np.sqrt((x.astype(np.float64) ** 2).sum(1) + 1e-10)
    y = x / norm[:, None]
    rows = slice(3, 7)  # views with an offset, as PartialFC passes its own rank's rows
    out = mx.nd.pfc_normalize_grad(mx.nd.array(dy)[rows], mx.nd.array(y)[rows], mx.nd.array(norm)[rows])
    dots = (y[rows] * dy[rows]).sum(1, keepdims=True)
    np.testing.assert_allclose(out.asnumpy(), (dy[rows] - y[rows] * dots) / norm[rows, None], rtol=1e-5, atol=1e-6)


def no_targets(d: int):
    """xn, target, tcoef of pfc_sparse_sgd for a batch without target entries."""
    return mx.nd.zeros((1, d)), mx.nd.array([-1], dtype="int64"), mx.nd.zeros((1,))


@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_sparse_sgd_is_bit_identical_to_mxnet_lazy_update(momentum):
    rng = np.random.default_rng(3)
    c, d, s = 400, 24, 37
    w = rng.standard_normal((c, d)).astype(np.float32)
    m = rng.standard_normal((c, d)).astype(np.float32)
    grad = rng.standard_normal((s, d)).astype(np.float32)
    index = np.sort(rng.choice(c, s, replace=False)).astype(np.int64)
    idx = mx.nd.array(index, dtype="int64")
    kw = dict(lr=0.07, wd=5e-4)
    ours_w, ours_m = mx.nd.array(w), mx.nd.array(m)
    mx.nd.pfc_sparse_sgd(ours_w, mx.nd.array(grad), ours_m, idx, mx.nd.ones((s,)), *no_targets(d),
                         momentum=momentum, normalize=False, out=ours_w, **kw)
    ref_w, ref_m = mx.nd.array(w), mx.nd.array(m)
    rsp = mx.nd.sparse.row_sparse_array((mx.nd.array(grad), idx), shape=(c, d))
    if momentum:
        mx.nd.sgd_mom_update(ref_w, rsp, ref_m, out=ref_w, momentum=momentum, rescale_grad=1.0, lazy_update=True, **kw)
    else:
        mx.nd.sgd_update(ref_w, rsp, out=ref_w, rescale_grad=1.0, lazy_update=True, **kw)
    np.testing.assert_array_equal(ours_w.asnumpy(), ref_w.asnumpy())
    np.testing.assert_array_equal(ours_m.asnumpy(), ref_m.asnumpy())
    untouched = np.setdiff1d(np.arange(c), index)
    np.testing.assert_array_equal(ours_w.asnumpy()[untouched], w[untouched])


def test_sparse_sgd_assembles_the_gradient_with_targets_and_normalisation():
    rng = np.random.default_rng(4)
    c, d, s, n = 50, 16, 8, 9
    w = rng.standard_normal((c, d)).astype(np.float32)
    grad = rng.standard_normal((s, d)).astype(np.float32)
    xn = rng.standard_normal((n, d)).astype(np.float32)
    target = np.array([3, -1, 0, 3, 7, -1, 3, 0, 5], np.int64)  # columns shared by several rows
    tcoef = rng.standard_normal(n).astype(np.float32)
    index = rng.choice(c, s, replace=False).astype(np.int64)
    norm = np.sqrt((w[index].astype(np.float64) ** 2).sum(1))
    args = [mx.nd.array(index, dtype="int64"), mx.nd.array(norm), mx.nd.array(xn), mx.nd.array(target, dtype="int64"),
            mx.nd.array(tcoef)]
    out_w, out_m = mx.nd.array(w), mx.nd.zeros((c, d))
    mx.nd.pfc_sparse_sgd(out_w, mx.nd.array(grad), out_m, *args, lr=0.1, momentum=0.9, wd=0.0, normalize=True,
                         out=out_w)
    full = grad.astype(np.float64)
    for i in np.flatnonzero(target >= 0):
        full[target[i]] += tcoef[i] * xn[i]
    wi = w[index].astype(np.float64)
    g = full / norm[:, None] - wi * (wi * full).sum(1, keepdims=True) / norm[:, None] ** 3
    np.testing.assert_allclose(out_m.asnumpy()[index], -0.1 * g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_w.asnumpy()[index], w[index] - 0.1 * g, rtol=1e-5, atol=1e-6)
    with pytest.raises(mx.base.MXNetError, match="outside"):
        mx.nd.pfc_sparse_sgd(out_w, mx.nd.array(grad), out_m, mx.nd.array(index + c, dtype="int64"), *args[1:],
                             lr=0.1, out=out_w).wait_to_read()
    bad = args[:3] + [mx.nd.array(np.where(target == 7, s, target), dtype="int64"), args[4]]
    with pytest.raises(mx.base.MXNetError, match=r"target 8 of row 4 is outside \[-1, 8\)"):
        mx.nd.pfc_sparse_sgd(out_w, mx.nd.array(grad), out_m, *bad, lr=0.1, out=out_w).wait_to_read()
    with pytest.raises(mx.base.MXNetError, match="attribute lr must be a finite number, got 'nan'"):
        mx.nd.pfc_sparse_sgd(out_w, mx.nd.array(grad), out_m, *args, lr=float("nan"), out=out_w).wait_to_read()


@pytest.mark.parametrize("threshold", [0.0, 0.3])
def test_fused_head_equals_stock_head_over_sampled_steps(threshold):
    """The two implementations of PartialFC on the same batches: losses, gradients and centers agree."""
    rng = np.random.default_rng(5)
    batches = [(rng.standard_normal((48, 64)).astype(np.float32), rng.integers(0, 3000, 48)) for _ in range(3)]
    runs = {}
    for impl in ("fused", "stock"):
        pfc = PartialFC(3000, 64, margin=(0.9, 0.4, 0.15), scale=32.0, sample_rate=0.2,
                        interclass_filtering_threshold=threshold, seed=3, kernels=impl)
        assert pfc.fused == (impl == "fused")
        out = []
        for x, y in batches:
            loss, grad = pfc.forward_backward(mx.nd.array(x), mx.nd.array(y))
            out.append((loss, grad.asnumpy(), center_grad(pfc)))
            pfc.step(0.2, momentum=0.9, wd=5e-4)
            assert center_grad(pfc) is None
        runs[impl] = out, pfc.weight.asnumpy(), pfc.momentum.asnumpy()
    (fused, w_f, m_f), (stock, w_s, m_s) = runs["fused"], runs["stock"]
    for (lf, gf, cf), (ls, gs, cs) in zip(fused, stock):
        assert abs(lf - ls) <= 1e-5 * abs(ls)
        np.testing.assert_allclose(gf, gs, rtol=1e-4, atol=1e-5 * np.abs(gs).max())
        np.testing.assert_allclose(cf, cs, rtol=1e-4, atol=1e-5 * np.abs(cs).max())
    np.testing.assert_allclose(w_f, w_s, rtol=1e-5, atol=1e-5 * np.abs(w_s).max())
    np.testing.assert_allclose(m_f, m_s, rtol=1e-4, atol=1e-5 * np.abs(m_s).max())


@pytest.mark.parametrize("impl", ["fused", "stock"])
def test_nan_embedding_gives_nan_loss(impl):
    pfc = PartialFC(40, 8, sample_rate=0.5, kernels=impl)
    x = np.ones((4, 8), np.float32)
    x[2, 3] = np.nan
    loss, _ = pfc.forward_backward(mx.nd.array(x), mx.nd.array([0, 1, 2, 3]))
    assert np.isnan(loss)


def run_python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=300)


def test_concurrent_first_builds_compile_once_and_both_load(tmp_path):
    env = {"PFC_MX_CACHE": str(tmp_path)}
    code = "from pfc_mx import kernels; assert kernels.load(), kernels.unavailable_reason(); print(kernels.build())"
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    paths = {out.strip() for out, _ in outs}
    assert len(paths) == 1
    built = list((tmp_path / "kernels").glob("*.so"))
    assert [str(p) for p in built] == list(paths)  # one library, no temporary left behind
    mtime = built[0].stat().st_mtime_ns
    again = run_python(code, env)
    assert again.returncode == 0 and built[0].stat().st_mtime_ns == mtime  # cached: not rebuilt


def test_without_a_compiler_auto_falls_back_and_fused_says_why(tmp_path):
    result = run_python("""
        import logging; logging.basicConfig(level=logging.WARNING)
        from pfc_mx.head import PartialFC
        from pfc_mx import kernels
        assert PartialFC(10, 4).fused is False
        print("reason:", kernels.unavailable_reason())
        try:
            PartialFC(10, 4, kernels="fused")
        except RuntimeError as e:
            print("fused:", e)
        """, {"PFC_MX_CACHE": str(tmp_path), "CXX": "no-such-compiler", "PFC_MX_KERNELS": "auto"})
    assert result.returncode == 0, result.stderr
    assert "reason: no C++ compiler ('no-such-compiler' not on PATH" in result.stdout
    assert "fused: kernels='fused' but they cannot be loaded: no C++ compiler" in result.stdout
    assert "using stock MXNet operators" in result.stderr
