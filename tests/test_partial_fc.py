"""pfc_mx.head (PartialFC) against a plain-Gluon full FC, and 2 ranks against 1 rank on the same global batch."""
from __future__ import annotations

import math

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon
from scipy import stats

from pfc_mx import shard
from pfc_mx.head import PartialFC
from tests.center_grad import center_grad
from tests.dist_cases.partial_fc import CONFIGS, global_batch, run_head
from tests.ranks import run_ranks

IMPLEMENTATIONS = ["fused", "stock", "original"]


@pytest.fixture(autouse=True, params=IMPLEMENTATIONS)
def kernels(request, monkeypatch):
    """Every test runs on both implementations of the head (PartialFC reads PFC_MX_KERNELS)."""
    monkeypatch.setenv("PFC_MX_KERNELS", request.param)
    return request.param


MARGINS = {"arcface": (1.0, 0.5, 0.0), "cosface": (1.0, 0.0, 0.4), "combined": (0.9, 0.4, 0.15)}


class CosineFC(gluon.HybridBlock):
    """Reference head: full FC without bias between L2-normalised embeddings and L2-normalised centers."""

    def __init__(self, num_classes: int, dim: int, **kw):
        super().__init__(**kw)
        self.num_classes = num_classes
        self.weight = self.params.get("weight", shape=(num_classes, dim), dtype="float64")

    def hybrid_forward(self, F, x, weight):
        xn = F.L2Normalization(x, mode="instance")
        wn = F.L2Normalization(weight, mode="instance")
        return F.clip(F.FullyConnected(xn, wn, no_bias=True, num_hidden=self.num_classes), -1, 1)


def reference_logits(cos, y, margin, scale, threshold):
    """Margin logits written independently of pfc_mx.margin (arcface_torch's form for m1 = 1)."""
    m1, m2, m3 = margin
    onehot = mx.nd.one_hot(y, cos.shape[1], dtype="float64")
    c = mx.nd.sum(cos * onehot, axis=1, keepdims=True)
    if m1 == 1.0:
        sin = mx.nd.sqrt(1 - c * c)
        target = mx.nd.where(c > math.cos(math.pi - m2), c * math.cos(m2) - sin * math.sin(m2),
                             c - math.sin(math.pi - m2) * m2) - m3
    else:
        theta = mx.nd.arccos(c)
        target = mx.nd.where(m1 * theta + m2 <= math.pi, mx.nd.cos(m1 * theta + m2), c - m2 * math.sin(m2)) - m3
    others = cos * (cos <= threshold) if threshold > 0 else cos
    return scale * (others * (1 - onehot) + onehot * target)


def reference_run(weight, batches, margin, scale, threshold=0.0, lrs=(), kernels="stock"):
    """Loss, dL/dx, dL/dW of each batch (float64) and the centers after SGD steps with learning rates lrs.

    The loss as the head of `kernels` reports it: the mean cross-entropy, or for 'original' the
    original's mean of −log(p_target + 1e-30), which stops near 69.08 per sample (the gradients are
    the cross-entropy's on both).
    """
    net = CosineFC(*weight.shape)
    net.initialize(ctx=mx.cpu())
    net.weight.set_data(mx.nd.array(weight, dtype="float64"))
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9, "wd": 5e-4})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    out = []
    for i, (x, y) in enumerate(batches):
        xv = mx.nd.array(x, dtype="float64")
        yv = mx.nd.array(y, dtype="float64")
        xv.attach_grad()
        with autograd.record():
            per_sample = loss_fn(reference_logits(net(xv), yv, margin, scale, threshold), yv)
            loss = per_sample.mean()
        loss.backward()
        reported = loss.asscalar()
        if kernels == "original":
            reported = float(np.mean(-np.log(np.exp(-per_sample.asnumpy()) + 1e-30)))
        out.append((reported, xv.grad.asnumpy(), net.weight.grad().asnumpy()))
        if i < len(lrs):
            trainer.set_learning_rate(lrs[i])
            trainer.step(1)
    return out, net.weight.data().asnumpy()


def assert_close(actual, desired, rtol=1e-5):
    """Relative agreement, with an absolute floor at rtol × the largest magnitude (entries near zero)."""
    desired = np.asarray(desired)
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * max(np.abs(desired).max(), 1e-30))


def random_batch(rng, n, dim, num_classes):
    return rng.standard_normal((n, dim)).astype(np.float32), rng.integers(0, num_classes, n)


@pytest.mark.parametrize("margin_name, threshold", [("arcface", 0.0), ("cosface", 0.0), ("combined", 0.0),
                                                    ("arcface", 0.15)])
def test_one_rank_full_rate_equals_gluon_full_fc(margin_name, threshold, kernels):
    if kernels == "original" and threshold:
        pytest.skip("the original has no inter-class filtering (tests/test_head_original.py)")
    rng = np.random.default_rng(3)
    margin, scale = MARGINS[margin_name], 64.0
    pfc = PartialFC(23, 16, margin=margin, scale=scale, interclass_filtering_threshold=threshold, seed=1)
    x, y = random_batch(rng, 12, 16, 23)
    y[5] = y[4]  # two samples of one class: their center terms add up
    # centers near some embeddings so that margins and filtering both act on large cosines
    w = pfc.weight.asnumpy()
    w[y[:4]] = x[:4] * 0.01 + 0.002 * rng.standard_normal((4, 16)).astype(np.float32)
    pfc.set_rows(0, w)
    loss, grad = pfc.forward_backward(mx.nd.array(x), mx.nd.array(y))
    [(ref_loss, ref_dx, ref_dw)], _ = reference_run(w, [(x, y)], margin, scale, threshold, kernels=kernels)
    assert math.isclose(loss, ref_loss, rel_tol=1e-5)
    assert_close(grad.asnumpy(), ref_dx)
    np.testing.assert_array_equal(pfc.last_index, np.arange(23))
    assert_close(center_grad(pfc), ref_dw)


def test_three_sgd_steps_equal_gluon_trainer_sgd():
    rng = np.random.default_rng(4)
    pfc = PartialFC(10, 8, margin=MARGINS["arcface"], scale=16.0)
    w0 = pfc.weight.asnumpy()
    batches = [random_batch(rng, 6, 8, 10) for _ in range(3)]
    lrs = (0.1, 0.05, 0.2)
    for (x, y), lr in zip(batches, lrs):
        pfc.forward_backward(mx.nd.array(x), mx.nd.array(y))
        pfc.step(lr, momentum=0.9, wd=5e-4)
    _, ref_w = reference_run(w0, batches, MARGINS["arcface"], 16.0, lrs=lrs)
    assert not np.allclose(ref_w, w0)
    assert_close(pfc.weight.asnumpy(), ref_w)


def test_sampled_step_equals_full_fc_on_the_sampled_rows(kernels):
    rng = np.random.default_rng(5)
    pfc = PartialFC(200, 8, margin=MARGINS["combined"], scale=32.0, sample_rate=0.1, seed=2)
    x, y = random_batch(rng, 8, 8, 200)
    y[3] = y[2]
    w = pfc.weight.asnumpy()
    loss, grad = pfc.forward_backward(mx.nd.array(x), mx.nd.array(y))
    index = pfc.last_index
    remapped = np.searchsorted(index, y)
    [(ref_loss, ref_dx, ref_dw)], _ = reference_run(w[index], [(x, remapped)], MARGINS["combined"], 32.0,
                                                    kernels=kernels)
    assert math.isclose(loss, ref_loss, rel_tol=1e-5)
    assert_close(grad.asnumpy(), ref_dx)
    assert_close(center_grad(pfc), ref_dw)


def test_every_positive_is_sampled_and_exactly_num_sample_rows_are_used():
    rng = np.random.default_rng(6)
    pfc = PartialFC(500, 4, sample_rate=0.1)
    for step in range(3):
        x, y = random_batch(rng, 30 if step else 70, 4, 500)  # 70 labels: more positives than 0.1·500
        pfc.forward_backward(mx.nd.array(x), mx.nd.array(y))
        positives = np.unique(y)
        assert np.isin(positives, pfc.last_index).all()
        assert len(pfc.last_index) == max(50, len(positives)) == center_grad(pfc).shape[0]
        assert len(np.unique(pfc.last_index)) == len(pfc.last_index)
        pfc.step(0.1)
    # more positives than the shard can sample: num_sample = num_local, every row is used
    small = PartialFC(20, 4, sample_rate=0.1)
    small.forward_backward(mx.nd.ones((40, 4)), mx.nd.array(np.arange(40) % 20))
    np.testing.assert_array_equal(small.last_index, np.arange(20))


def test_unsampled_weight_and_momentum_rows_are_bit_identical_after_step():
    rng = np.random.default_rng(7)
    pfc = PartialFC(300, 8, sample_rate=0.1)
    used = []
    for step in range(3):
        _, w_before, m_before = pfc.get_shard()
        x, y = random_batch(rng, 6, 8, 300)
        pfc.forward_backward(mx.nd.array(x), mx.nd.array(y))
        pfc.step(0.5, momentum=0.9, wd=5e-4)
        _, w_after, m_after = pfc.get_shard()
        untouched = np.setdiff1d(np.arange(300), pfc.last_index)
        np.testing.assert_array_equal(w_after[untouched], w_before[untouched])
        np.testing.assert_array_equal(m_after[untouched], m_before[untouched])
        assert (w_after[pfc.last_index] != w_before[pfc.last_index]).any(axis=1).all()
        used.append(set(pfc.last_index))
    # momentum of rows used earlier (non-zero) survives a step that skips them
    assert (used[0] - used[2]) and np.abs(m_after[sorted(used[0] - used[2])]).max() > 0


def negative_counts(sampler, num_local, positives, count, draws):
    counts = np.zeros(num_local, np.int64)
    for i in range(draws):
        counts[sampler(positives, num_local, count, shard.step_rng(11, 0, i))] += 1
    return np.delete(counts, positives)


def test_negatives_are_uniform_chi_square():
    positives = np.array([3, 17, 40])
    counts = negative_counts(shard.sample_index, 60, positives, 12, 3000)
    assert counts.sum() == 3000 * 9
    assert stats.chisquare(counts).pvalue > 1e-3
    # the test has power: a sampler that prefers low rows is rejected
    def biased(pos, n, k, rng):
        rest = np.setdiff1d(np.arange(n), pos)
        p = np.linspace(1.0, 1.5, len(rest))
        return np.concatenate([pos, rng.choice(rest, k - len(pos), replace=False, p=p / p.sum())])
    assert stats.chisquare(negative_counts(biased, 60, positives, 12, 3000)).pvalue < 1e-3


def test_negative_subsets_are_uniform_chi_square():
    # the joint law, not only each row's rate: every 3 of the 6 non-positive rows equally likely
    positives = np.array([1, 4])
    seen = {}
    for i in range(4000):
        rows = shard.sample_index(positives, 8, 5, shard.step_rng(13, 0, i))
        assert len(rows) == 5 and set(positives) <= set(rows) and (np.diff(rows) > 0).all()
        key = tuple(sorted(set(rows.tolist()) - set(positives.tolist())))
        seen[key] = seen.get(key, 0) + 1
    assert len(seen) == 20  # C(6, 3)
    assert stats.chisquare(list(seen.values())).pvalue > 1e-3
    with pytest.raises(ValueError, match="count 2 is below the 3 positives"):
        shard.sample_index(np.array([0, 1, 2]), 10, 2, shard.step_rng(13, 0, 0))


def test_shards_partition_classes_and_init_is_independent_of_world_size():
    for c, w in [(10, 3), (7, 2), (1, 2), (9000, 4)]:
        ranges = [shard.shard_range(c, w, r) for r in range(w)]
        assert [s for s, _ in ranges] == list(np.cumsum([0] + [n for _, n in ranges])[:-1])
        assert sum(n for _, n in ranges) == c and max(n for _, n in ranges) - min(n for _, n in ranges) <= 1
    def full(c, w, dim=3):
        parts = []
        for r in range(w):
            start, n = shard.shard_range(c, w, r)
            rows = np.zeros((n, dim), np.float32)
            for lo, hi, block in shard.init_center_rows(start, n, dim, seed=5, chunk=1000):
                rows[lo:hi] = block
            parts.append(rows)
        return np.concatenate(parts)
    one = full(9000, 1)
    for w in (2, 3, 7):
        np.testing.assert_array_equal(full(9000, w), one)
    assert abs(one.std() - 0.01) < 5e-4
    assert not np.array_equal(one[:4096], one[4096:8192])  # blocks are seeded independently


def test_cos_plus_minus_one_and_angle_past_pi_give_finite_loss_and_gradients():
    pfc = PartialFC(6, 8, margin=MARGINS["arcface"], scale=64.0)
    w = pfc.weight.asnumpy()
    x = np.stack([w[0], -w[1], w[2] * 3, -w[3], w[4] + 1e-9])  # cos = 1, -1 (θ + m2 > π), 1, -1, ≈1
    y = np.array([0, 1, 2, 3, 4])
    for margin in MARGINS.values():
        pfc.margin = margin
        loss, grad = pfc.forward_backward(mx.nd.array(x), mx.nd.array(y))
        assert math.isfinite(loss) and np.isfinite(grad.asnumpy()).all()
        assert np.isfinite(center_grad(pfc)).all()
        pfc.step(0.1)
        assert np.isfinite(pfc.weight.asnumpy()).all()


def test_float16_embeddings_give_float16_gradient_of_the_float32_math():
    rng = np.random.default_rng(8)
    x, y = random_batch(rng, 6, 8, 9)
    x16 = x.astype(np.float16)
    results = []
    for dtype in ("float16", "float32"):
        pfc = PartialFC(9, 8, scale=16.0)
        results.append(pfc.forward_backward(mx.nd.array(x16.astype(np.float32)).astype(dtype), mx.nd.array(y)))
    (l16, g16), (l32, g32) = results
    assert g16.dtype == np.float16 and l16 == l32
    np.testing.assert_allclose(g16.asnumpy(), g32.asnumpy(), rtol=2e-3, atol=1e-3 * np.abs(g32.asnumpy()).max())


def test_host_centers_match_device_centers():
    runs = []
    for centers_on in ("device", "host"):
        pfc = PartialFC(50, 8, sample_rate=0.2, ctx=mx.cpu(1), centers_on=centers_on)
        out = []
        for step in range(2):
            x, y = random_batch(np.random.default_rng(step), 6, 8, 50)
            loss, grad = pfc.forward_backward(mx.nd.array(x, ctx=mx.cpu(1)), mx.nd.array(y))
            pfc.step(0.1)
            out.append((loss, grad.asnumpy()))
        runs.append((out, pfc.weight.asnumpy(), pfc.weight.context))
    (dev, w_dev, ctx_dev), (host, w_host, ctx_host) = runs
    assert ctx_dev == mx.cpu(1) and ctx_host == mx.cpu(0)
    for (la, ga), (lb, gb) in zip(dev, host):
        assert la == lb
        np.testing.assert_array_equal(ga, gb)
    np.testing.assert_array_equal(w_dev, w_host)


def test_set_rows_writes_only_the_overlap_with_the_shard():
    pfc = PartialFC(10, 4)
    _, w, m = pfc.get_shard()
    assert pfc.set_rows(8, np.ones((5, 4)), np.full((5, 4), 2.0)) == 2
    assert pfc.set_rows(10, np.ones((3, 4))) == 0
    _, w2, m2 = pfc.get_shard()
    np.testing.assert_array_equal(w2[:8], w[:8])
    np.testing.assert_array_equal(w2[8:], 1.0)
    np.testing.assert_array_equal(m2[8:], 2.0)


def test_bad_input_raises_value_error():
    pfc = PartialFC(10, 4)
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        pfc.forward_backward(mx.nd.ones((2, 5)), mx.nd.zeros((2,)))
    with pytest.raises(ValueError, match="outside"):
        pfc.forward_backward(mx.nd.ones((2, 4)), mx.nd.array([0, 10]))
    # checked before any cast: neither wrapped into int32 (2**32 + 3 is not class 3) nor truncated
    for bad, match in [([1, 2 ** 32 + 3], r"label 4294967299 \(rank 0, position 1\) is outside \[0, 10\)"),
                       ([2 ** 31, 1], "label 2147483648 .* outside"), ([1.0, np.nan], "label nan .* not a whole"),
                       ([3.9, 1.0], r"label 3.9 \(rank 0, position 0\) is not a whole number"),
                       (["a", "b"], "not numbers on rank 0")]:
        with pytest.raises(ValueError, match=match):
            pfc.forward_backward(mx.nd.ones((2, 4)), np.array(bad))
    # a shard beyond one MXNet array (2**31 - 1 elements in these builds): said before allocating anything
    with pytest.raises(ValueError, match="4194304 classes of dimension 512 on 1 rank.*use at least 2 ranks"):
        PartialFC(4_194_304, 512)
    wide = PartialFC(2 ** 21, 1)  # 2M classes, D 1: rate 1 with a batch of 1024 makes 2**31 logits
    with pytest.raises(ValueError, match=r"logits \(N × S = 1,024 × 2,097,152 elements\).*lower the sample rate"):
        wide.forward_backward(mx.nd.ones((1024, 1)), np.zeros(1024, np.int64))
    with mx.util.np_shape(True):
        empty = mx.nd.zeros((0, 4))
    with pytest.raises(ValueError, match="empty batch"):
        pfc.forward_backward(empty, np.zeros(0))
    with pytest.raises(ValueError, match="labels for"):
        pfc.forward_backward(mx.nd.ones((2, 4)), mx.nd.zeros((3,)))
    with pytest.raises(ValueError, match="not 2-D"):
        pfc.forward_backward(mx.nd.ones((2, 4, 1)), mx.nd.zeros((2,)))
    with pytest.raises(RuntimeError, match="forward_backward"):
        pfc.step(0.1)
    with pytest.raises(ValueError, match="sample_rate"):
        PartialFC(10, 4, sample_rate=0.0)


# ---------------------------------------------------------------- 2 ranks
@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory):
    """kernels → results of 2 ranks with that implementation, run once per module when first asked for."""
    runs = {}

    def get(kernels: str):
        if kernels not in runs:
            runs[kernels] = run_ranks("partial_fc_heads", tmp_path_factory.mktemp("pfc"), timeout=300,
                                      env={"PFC_MX_KERNELS": kernels})
        return runs[kernels]
    return get


@pytest.fixture
def two_rank_heads(two_rank_runs, kernels):
    """Results of 2 ranks with the implementation of this test's one-process heads."""
    return two_rank_runs(kernels)


@pytest.mark.dist
@pytest.mark.parametrize("name", [n for n, c in CONFIGS.items() if c.get("rate", 1.0) == 1.0])
def test_two_ranks_equal_one_rank_on_concatenated_batch(two_rank_heads, name, kernels):
    cfg = CONFIGS[name]
    if kernels == "original" and cfg.get("threshold"):
        pytest.skip("the original has no inter-class filtering")
    one = run_head(cfg, world=1, rank=0)
    ranks = [{k.split("/", 1)[1]: v for k, v in r.items() if k.startswith(name + "/")} for r in two_rank_heads]
    rtol = 1e-3 if cfg.get("dtype") == "float16" else 1e-5
    for r, res in enumerate(ranks):
        assert_close(res["loss"], one["loss"], rtol)
        np.testing.assert_array_equal(res["loss"], ranks[0]["loss"])  # identical on every rank
        b = cfg["B"]
        assert_close(res["grad"], one["grad"][:, r * b:(r + 1) * b], rtol)
    order = np.argsort([int(res["class_start"]) for res in ranks])
    weight = np.concatenate([ranks[i]["weight"] for i in order])
    momentum = np.concatenate([ranks[i]["momentum"] for i in order])
    assert weight.shape == one["weight"].shape
    assert_close(weight, one["weight"], rtol)
    assert_close(momentum, one["momentum"], rtol)


@pytest.mark.dist
def test_two_ranks_sample_every_positive_and_draw_different_negatives(two_rank_heads):
    cfg = CONFIGS["sampled"]
    res = [{k.split("/", 1)[1]: v for k, v in r.items() if k.startswith("sampled/")} for r in two_rank_heads]
    per_step = [r["used_per_step"] for r in res]
    offsets = [np.concatenate([[0], np.cumsum(p)]) for p in per_step]
    for step in range(cfg["steps"]):
        _, y = global_batch(cfg, step, 2)
        used = [r["used_classes"][o[step]:o[step + 1]] for r, o in zip(res, offsets)]
        for r, u in enumerate(used):
            start, n = shard.shard_range(cfg["C"], 2, r)
            positives = np.unique(y[(y >= start) & (y < start + n)])
            assert np.isin(positives, u).all()
            assert len(u) == max(int(0.1 * n), len(positives))
        # both shards hold the same local positives: only the per-rank seed tells the draws apart
        assert not np.array_equal(used[0], used[1] - 200)


@pytest.mark.dist
def test_unequal_batches_raise_on_every_rank_instead_of_hanging(two_rank_heads):
    assert all("same batch size" in str(r["unequal_batch_error"]) for r in two_rank_heads)


@pytest.mark.dist
def test_ranks_on_different_kernels_raise_on_every_rank(two_rank_heads):
    assert all("ranks disagree on the Partial FC kernels (['fused', 'stock']" in str(r["mixed_kernels_error"])
               for r in two_rank_heads)


@pytest.mark.dist
def test_ranks_with_different_embedding_dtypes_raise_on_every_rank(two_rank_heads):
    assert all("same dtype, got ['float32', 'float16']" in str(r["mixed_dtype_error"]) for r in two_rank_heads)


@pytest.mark.dist
def test_ranks_with_different_settings_raise_on_every_rank(two_rank_heads):
    # C 10 against 6: overlapping shards and classes without an owner would give a wrong loss silently
    assert all("disagree on the Partial FC settings (num_classes, m1, m2, m3, scale, interclass threshold): "
               "[(10, 1.0, 0.5, 0.0, 64.0, 0.0), (6, 1.0, 0.5, 0.0, 64.0, 0.0)]" in str(r["mixed_classes_error"])
               for r in two_rank_heads)
    assert all("disagree on the Partial FC settings" in str(r["mixed_scale_error"]) for r in two_rank_heads)


@pytest.mark.dist
def test_a_bad_label_on_one_rank_raises_on_every_rank(two_rank_heads):
    assert all("label 7 (rank 1, position 1) is outside [0, 5)" in str(r["bad_label_error"]) for r in two_rank_heads)


def test_host_arrays_are_private_copies():
    from pfc_mx.head.arrays import host_array

    src = np.arange(5, dtype=np.int64)
    arr = host_array(src, "int64", mx.cpu())
    src[0] = 99  # the NDArray wraps a copy: the caller's array stays writable and independent
    np.testing.assert_array_equal(arr.asnumpy(), [0, 1, 2, 3, 4])
    assert arr.dtype == np.int64 and arr.context == mx.cpu()
