"""symbols.prelu_stock: MXNet's LeakyReLU('prelu') slope gradient in planned graphs, and the backbones' form."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd
from mxnet.gluon import HybridBlock

import symbols
from symbols import batchnorm, prelu, prelu_stock

ROOT = Path(__file__).resolve().parents[1]


class Sandwich(HybridBlock):
    """x + 0 → PReLU → · 2: the PReLU's input and output gradient are inner buffers of the planned graph."""

    def __init__(self, composed: bool):
        super().__init__(prefix="s_")
        self._composed = composed
        with self.name_scope():
            self.alpha = self.params.get("alpha", shape=(5,))

    def hybrid_forward(self, F, x, alpha):
        h = x + 0
        y = prelu_stock.composed(F, h, alpha) if self._composed else F.LeakyReLU(h, gamma=alpha, act_type="prelu")
        return y * 2


def sandwich_gradients(composed: bool, x, alpha, dout):
    block = Sandwich(composed)
    block.initialize()
    block.alpha.set_data(mx.nd.array(alpha))
    block.hybridize(static_alloc=True, static_shape=True)
    xs = mx.nd.array(x)
    xs.attach_grad()
    with autograd.record():
        out = block(xs)
    out.backward(mx.nd.array(dout))
    return out.asnumpy(), xs.grad.asnumpy(), block.alpha.grad().asnumpy()


def test_hybridized_leaky_relu_prelu_scales_its_slope_gradient_and_the_composed_form_does_not():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 5, 7, 9)).astype(np.float32)
    x.flat[::11] = 0.0
    alpha = np.array([0.25, -0.5, 0.1, 0.6, -0.2], dtype=np.float32)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    dy = 2 * dout  # the PReLU's output gradient, exact in float32
    a = alpha.reshape(1, -1, 1, 1)
    ref_out = 2 * np.where(x > 0, x, x * a)
    ref_dx = np.where(x > 0, dy, dy * a)
    ref_dalpha = np.where(x > 0, 0.0, dy.astype(np.float64) * x).sum(axis=(0, 2, 3))
    bound = 16 * 2.0 ** -24 * np.abs(np.where(x > 0, 0.0, dy.astype(np.float64) * x)).sum(axis=(0, 2, 3))
    out, dx, dalpha = sandwich_gradients(True, x, alpha, dout)
    assert out.tobytes() == ref_out.tobytes() and dx.tobytes() == ref_dx.tobytes()
    assert np.all(np.abs(dalpha - ref_dalpha) <= bound)
    # MXNet 1.9.1: the backward writes dx over dy, then reduces sum(dy · x) from what it wrote
    stock_out, stock_dx, stock_dalpha = sandwich_gradients(False, x, alpha, dout)
    assert stock_out.tobytes() == out.tobytes() and stock_dx.tobytes() == dx.tobytes()
    np.testing.assert_allclose(stock_dalpha, alpha * ref_dalpha, rtol=1e-5)


def slope_gradients(name: str, hybridize: bool):
    """{slope name: gradient} of one forward/backward of a stock-PReLU backbone on a fixed batch (and
    MXNet's BatchNorm: the fused one changes the gradients it passes down, tests/test_batchnorm.py)."""
    prelu.set_kernels("stock")
    batchnorm.set_kernels("stock")
    try:
        net = symbols.get_model(name, embedding_size=16)
        mx.random.seed(0)
        net.initialize(mx.init.Xavier())
        for p in net.collect_params().values():  # slopes of both signs, as trained nets have
            if p.name.endswith("_alpha"):
                p.set_data(mx.nd.array(np.random.default_rng(1).uniform(-0.2, 0.6, p.shape)))
        if hybridize:
            net.hybridize(static_alloc=True, static_shape=True)
        rng = np.random.default_rng(2)
        images = mx.nd.array(rng.uniform(0, 255, (2, 3, 112, 112)))
        with autograd.record():
            emb = net(images)
        emb.backward(mx.nd.array(rng.standard_normal((2, 16))))
        assert not prelu.fused_in(net)
        return {n: p.grad().asnumpy() for n, p in net.collect_params().items() if n.endswith("_alpha")}
    finally:
        prelu.set_kernels(None)
        batchnorm.set_kernels(None)


def assert_same_slope_gradients(hybridized, imperative):
    """The imperative network runs MXNet's operator one call at a time (right: tests/test_prelu.py);
    hybridized and imperative runs round differently, by about 1e-4 of the largest gradient."""
    assert hybridized.keys() == imperative.keys()
    for n, ref in imperative.items():
        np.testing.assert_allclose(hybridized[n], ref, rtol=0, atol=1e-3 * np.abs(ref).max(), err_msg=n)


@pytest.mark.parametrize("name", ["mobilefacenet", "iresnet_tiny"])
def test_stock_prelu_backbones_have_the_imperative_slope_gradients_when_hybridized(name):
    # before symbols.prelu_stock: MobileFaceNet's conv_1 slope gradient was alpha times this one
    assert_same_slope_gradients(slope_gradients(name, True), slope_gradients(name, False))


def test_without_onednn_as_on_gpus_every_slope_gradient_is_right():
    code = """
        import numpy as np, sys
        sys.path.insert(0, "tests")
        import test_prelu_stock as t
        t.assert_same_slope_gradients(t.slope_gradients("iresnet_tiny", True), t.slope_gradients("iresnet_tiny", False))
        print("same")
        """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "MXNET_MKLDNN_ENABLED": "0"}, timeout=300)
    assert result.returncode == 0 and "same" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]


def test_exported_backbone_has_one_leaky_relu_per_prelu_and_the_same_outputs(tmp_path):
    prelu.set_kernels("stock")
    try:
        net = symbols.get_model("iresnet_tiny", embedding_size=8)
        net.initialize(mx.init.Xavier())
        net.hybridize(static_alloc=True, static_shape=True)
        images = mx.nd.array(np.random.default_rng(3).uniform(0, 255, (2, 3, 112, 112)))
        out = net(images)
        cached = net._cached_graph[1].tojson()
        assert '"where"' in cached and '"LeakyReLU"' not in cached  # the training graph: the composed form
        net.export(str(tmp_path / "net"))
    finally:
        prelu.set_kernels(None)
    saved = (tmp_path / "net-symbol.json").read_text()
    slopes = [n for n in net.collect_params() if n.endswith("_alpha")]
    assert saved.count('"op": "LeakyReLU"') == len(slopes) and '"where"' not in saved
    loaded = mx.gluon.SymbolBlock.imports(str(tmp_path / "net-symbol.json"), ["data"], str(tmp_path / "net-0000.params"))
    assert loaded(images).asnumpy().tobytes() == out.asnumpy().tobytes()
