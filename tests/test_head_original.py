"""kernels='original': the head that replays insightface's MXNet partial_fc operator by operator.

Its float64 math is checked with the other heads against a plain-Gluon full FC (tests/test_partial_fc.py,
one rank and two). Here: its numbers against the original's step written out in plain MXNet below (from
recognition/partial_fc/mxnet: memory_softmax.MarginLoss.forward, memory_module.backward and the
memory bank's sgd_mom_update), bit for bit; what it refuses; the backbone a Run builds beside it.
tools/compare_original.py checks the same against the original code itself (docs/REPRODUCE.md §5.5).
"""
from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

from pfc_mx.config import Config, DataConfig, ModelConfig, PartialFCConfig, build_config
from pfc_mx.errors import ConfigError
from pfc_mx.head import PartialFC
from pfc_mx.train import build
from symbols import prelu

MARGINS = {"arcface": (1.0, 0.5, 0.0), "cosface": (1.0, 0.0, 0.4), "combined": (0.9, 0.4, 0.15)}


def original_step(x, w, y, margin, scale):
    """The original's rate-1 step on one rank: (its loss, d sum-loss / dx, d sum-loss / dw), float32 NDArrays."""
    m1, m2, m3 = margin
    x, w = mx.nd.array(x), mx.nd.array(w)
    x.attach_grad()
    w.attach_grad()
    onehot = mx.nd.one_hot(mx.nd.array(y), depth=w.shape[0], on_value=1.0, off_value=0.0)
    with autograd.record():
        cos = mx.nd.dot(mx.nd.L2Normalization(x), mx.nd.L2Normalization(w), transpose_b=True)
        if (m1, m2) == (1.0, 0.0):
            logits = cos - onehot * m3
        else:
            picked = cos * onehot
            angle = mx.nd.arccos(picked)
            angle = angle * m1 if m1 != 1.0 else angle
            angle = angle + m2 if m2 != 0.0 else angle
            target = mx.nd.cos(angle) - m3 if m3 != 0.0 else mx.nd.cos(angle)
            logits = cos + (target * onehot - picked)
        logits = logits * scale
    top = mx.nd.max(logits, axis=1, keepdims=True)
    prob = mx.nd.exp(mx.nd.broadcast_sub(logits, top))
    prob = mx.nd.broadcast_div(prob, mx.nd.sum(prob, axis=1, keepdims=True))
    loss = -mx.nd.mean(mx.nd.log(mx.nd.sum(prob * onehot, axis=1, keepdims=True) + 1e-30))
    logits.backward(out_grad=prob - onehot)
    return loss, x.grad, w.grad


@pytest.mark.parametrize("margin", MARGINS.values(), ids=MARGINS.keys())
def test_loss_gradient_and_center_update_are_the_originals_bit_for_bit(margin):
    rng = np.random.default_rng(11)
    n, c, d, lr, wd, momentum = 16, 10, 24, 0.1, 5e-4, 0.9   # N a power of two: the mean's 1/N is exact
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = rng.integers(0, c, n)
    w = 0.01 * rng.standard_normal((c, d)).astype(np.float32)
    w[y[:3]] = x[:3] * 0.01 + 0.004 * rng.standard_normal((3, d))   # large target cosines: the margin acts
    mom = 0.001 * rng.standard_normal((c, d)).astype(np.float32)
    pfc = PartialFC(c, d, margin=margin, scale=64.0, kernels="original")
    pfc.set_rows(0, w, mom)
    loss, grad = pfc.forward_backward(mx.nd.array(x), y)
    pfc.step(lr, momentum=momentum, wd=wd)
    ref_loss, ref_dx, ref_dw = original_step(x, w, y, margin, 64.0)
    # the original's optimizers take the sum loss's gradient with rescale_grad 1/N
    ref_w, ref_mom = mx.nd.array(w), mx.nd.array(mom)
    mx.nd.sgd_mom_update(ref_w, ref_dw, ref_mom, lr=lr, wd=wd, momentum=momentum, rescale_grad=1.0 / n, out=ref_w)
    assert np.float32(loss) == ref_loss.asnumpy()[0]
    assert (grad.asnumpy() * n).tobytes() == ref_dx.asnumpy().tobytes()
    _, weight, moment = pfc.get_shard()
    assert weight.tobytes() == ref_w.asnumpy().tobytes() and moment.tobytes() == ref_mom.asnumpy().tobytes()
    assert not np.array_equal(weight, w)


def test_its_loss_stops_near_69_per_sample_as_the_originals_and_its_gradient_does_not():
    x = np.array([[1, 0.001 * i] for i in range(4)], np.float32)
    w = np.array([[-1, 0.01], [1, 0.01]], np.float32)   # cosine −1 with the target, +1 with the other: loss ≈ 128
    losses, grads = {}, {}
    for kernels in ("stock", "original"):
        pfc = PartialFC(2, 2, margin=(1.0, 0.0, 0.0), scale=64.0, kernels=kernels)
        pfc.set_rows(0, w)
        losses[kernels], g = pfc.forward_backward(mx.nd.array(x), np.zeros(4, np.int64))
        grads[kernels] = g.asnumpy()
    assert losses["stock"] > 120 and losses["original"] == pytest.approx(-np.log(1e-30), rel=1e-6)
    np.testing.assert_allclose(grads["original"], grads["stock"], rtol=1e-5, atol=1e-6 * np.abs(grads["stock"]).max())


def test_inter_class_filtering_is_refused_in_one_line_by_the_head_and_by_the_config():
    with pytest.raises(ValueError, match="kernels='original' replays insightface's MXNet partial_fc, which has no "
                                         "inter-class filtering"):
        PartialFC(10, 4, interclass_filtering_threshold=0.2, kernels="original")
    assert PartialFC(10, 4, kernels="original").kernels == "original"
    with pytest.raises(ConfigError, match="partial_fc.kernels = original replays insightface's MXNet partial_fc, "
                                          "which has no inter-class filtering"):
        build_config({"partial_fc": {"kernels": "original"}, "loss": {"interclass_filtering_threshold": 0.2}})
    assert build_config({"partial_fc": {"kernels": "original"}}).partial_fc.kernels == "original"


def test_a_runs_backbone_beside_it_takes_mxnets_own_operators_as_the_original():
    prelu.set_kernels("fused")   # in force, and overruled by the config's kernels
    try:
        nets = {k: build.backbone(Config(model=ModelConfig(name="iresnet_tiny", embedding_size=8),
                                         data=DataConfig(batch_size=2), partial_fc=PartialFCConfig(kernels=k)),
                                  mx.cpu()) for k in ("original", "fused")}
        assert not prelu.fused_in(nets["original"]) and prelu.fused_in(nets["fused"])
        nets["original"].hybridize(static_alloc=True)   # a new graph keeps the pinned kernels
        nets["original"](mx.nd.zeros((2, 3, 112, 112)))
        assert not prelu.fused_in(nets["original"])
        with pytest.raises(ValueError, match="PReLU kernels must be"):
            nets["fused"].use_kernels("fast", "stock")
    finally:
        prelu.set_kernels(None)


def test_original_in_the_environment_means_mxnets_own_backbone_operators(monkeypatch):
    monkeypatch.setenv("PFC_MX_KERNELS", "original")
    assert prelu.kernels() == "stock" and not prelu.use_fused(mx.cpu())
