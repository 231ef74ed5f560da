"""symbols.prelu: the fused PReLU kernel against NumPy and MXNet's LeakyReLU('prelu'); which graphs get it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

import symbols
from pfc_mx import kernels
from symbols import batchnorm, prelu

ROOT = Path(__file__).resolve().parents[1]
# (shape of x, slopes): odd sizes, one shared slope, 2-D and 3-D inputs
CASES = [((3, 5, 7, 9), 5), ((3, 5, 7, 9), 1), ((4, 6), 6), ((2, 3, 4), 3), ((2, 64, 33, 35), 64)]


@pytest.fixture(autouse=True, scope="module")
def loaded():
    """The kernels must build on every machine the suite runs on (setup installs g++): fail, never skip."""
    assert kernels.load(), kernels.unavailable_reason()
    yield
    prelu.set_kernels(None)


def signed_with_zeros(rng, shape):
    """Normal values of both signs with exact zeros (+0 and -0) at every 5th and 7th element."""
    x = rng.standard_normal(shape).astype(np.float32)
    x.flat[::5] = 0.0
    x.flat[3::7] = -0.0
    return x


def run(op: str, x, alpha, dy):
    """(y, dx, dalpha) of pfc_prelu or MXNet's LeakyReLU('prelu') through autograd."""
    xs, a = mx.nd.array(x), mx.nd.array(alpha)
    xs.attach_grad()
    a.attach_grad()
    with autograd.record():
        y = mx.nd.pfc_prelu(xs, a) if op == "fused" else mx.nd.LeakyReLU(xs, gamma=a, act_type="prelu")
    y.backward(mx.nd.array(dy))
    return y.asnumpy(), xs.grad.asnumpy(), a.grad.asnumpy()


def numpy_prelu(x, alpha, dy):
    """float32 y and dx, and the slope gradient as the float64 sum of the float32 products dy·x (x ≤ 0)."""
    a = alpha.reshape((1, -1) + (1,) * (x.ndim - 2))
    y = np.where(x > 0, x, x * a)
    dx = np.where(x > 0, dy, dy * a)
    terms = np.where(x > 0, np.float32(0), dy * x).astype(np.float64)
    axes = tuple(k for k in range(x.ndim) if k != 1 or alpha.size == 1)
    return y, dx, terms.sum(axis=axes).reshape(alpha.shape), np.abs(terms).sum(axis=axes).reshape(alpha.shape)


@pytest.mark.parametrize("shape, slopes", CASES)
def test_fused_prelu_equals_numpy_and_mxnet_prelu(shape, slopes):
    rng = np.random.default_rng(sum(shape) + slopes)
    x, dy = signed_with_zeros(rng, shape), rng.standard_normal(shape).astype(np.float32)
    alpha = rng.uniform(-0.3, 0.6, slopes).astype(np.float32)
    y, dx, dalpha = run("fused", x, alpha, dy)
    ref_y, ref_dx, ref_dalpha, magnitude = numpy_prelu(x, alpha, dy)
    stock_y, stock_dx, stock_dalpha = run("stock", x, alpha, dy)
    # forward and input gradient: one float operation per element, bit for bit (the sign of zeros too)
    for ours, ref, stock in ((y, ref_y, stock_y), (dx, ref_dx, stock_dx)):
        assert ours.tobytes() == ref.tobytes() == stock.tobytes()
    # slope gradient: a sum of float32 products, in another order than MXNet's. Ours sums blocks of 64
    # in float (a few terms per SIMD lane, then the lanes: ≤ ~12 roundings) and the blocks in double;
    # MXNet sums in float with Kahan compensation. Both are compared with the float64 sum, to a few
    # float32 roundings of the sum of the terms' magnitudes (the bound of such sums, per channel)
    bound = 16 * 2.0 ** -24 * magnitude
    assert np.all(np.abs(dalpha - ref_dalpha) <= bound), (dalpha - ref_dalpha) / magnitude
    assert np.all(np.abs(stock_dalpha - ref_dalpha) <= bound)


def test_nan_and_infinities_propagate_as_in_mxnet():
    x = np.array([[np.nan, np.inf, -np.inf, 1.0, -1.0, 0.0]], dtype=np.float32).reshape(1, 1, 6)
    alpha, dy = np.array([0.25], dtype=np.float32), np.full((1, 1, 6), 0.5, dtype=np.float32)
    fused, stock = run("fused", x, alpha, dy), run("stock", x, alpha, dy)
    for ours, theirs in zip(fused[:2], stock[:2]):
        assert ours.tobytes() == theirs.tobytes()
    assert np.isnan(fused[2]).all() and np.isnan(stock[2]).all()


def test_bad_shapes_are_errors_naming_the_operator():
    with pytest.raises(mx.base.MXNetError, match="pfc_prelu: alpha must be"):
        mx.nd.pfc_prelu(mx.nd.ones((2, 4, 3)), mx.nd.ones((3,))).wait_to_read()
    with pytest.raises(mx.base.MXNetError, match="pfc_prelu: x must be"):
        mx.nd.pfc_prelu(mx.nd.ones((4,)), mx.nd.ones((1,))).wait_to_read()


def twins(name: str, imperative: bool = False):
    """Copies of one initialised backbone, hybridized with the stock PReLU and with the fused one
    (and, if asked, a third one not hybridized: stock operators run one by one); MXNet's BatchNorm in
    all (tests/test_batchnorm.py compares the fused one)."""
    nets = []
    batchnorm.set_kernels("stock")  # in force at the first graph of each: their training graphs too
    mx.random.seed(0)  # the Xavier weights: the same whatever ran before in this process
    for choice in ("stock", "fused") + (("imperative",) if imperative else ()):
        prelu.set_kernels("stock" if choice == "imperative" else choice)
        net = symbols.get_model(name, embedding_size=16)
        net.initialize(mx.init.Xavier())
        if nets:
            for p, q in zip(nets[0].collect_params().values(), net.collect_params().values()):
                q.set_data(p.data())
        if choice != "imperative":
            net.hybridize(static_alloc=True, static_shape=True)
        net(mx.nd.zeros((2, 3, 112, 112)))
        assert prelu.fused_in(net) == (choice == "fused")
        nets.append(net)
    prelu.set_kernels(None)
    batchnorm.set_kernels(None)
    for p in nets[0].collect_params().values():  # slopes of both signs, as trained nets have
        if p.name.endswith("_alpha"):
            p.set_data(mx.nd.array(np.random.default_rng(1).uniform(-0.2, 0.6, p.shape)))
    for net in nets[1:]:
        for p, q in zip(nets[0].collect_params().values(), net.collect_params().values()):
            q.set_data(p.data())
    return nets


def step_gradients(nets):
    """(embeddings, {name: gradient}) of each net after one forward/backward on the same batch."""
    rng = np.random.default_rng(2)
    images = mx.nd.array(rng.uniform(0, 255, (2, 3, 112, 112)))
    head = mx.nd.array(rng.standard_normal((2, 16)))
    out = []
    for net in nets:
        with autograd.record():
            emb = net(images)
        emb.backward(head)
        out.append((emb.asnumpy(), {n: p.grad().asnumpy() for n, p in net.collect_params().items()
                                    if p.grad_req != "null"}))
    return out


# Every gradient but the slopes' bit for bit, in both families (MobileFaceNet's first two layers
# differed in their last bits while the fused kernel converted oneDNN's layout itself: oneDNN then
# picked other kernels around it; symbols/plain_layout.py converts in a Reshape before it).
# The slope gradients are compared with the imperative network's (stock operators one by one):
# MXNet's own LeakyReLU('prelu') in a planned graph can return alpha times the right one (its
# backward writes the input gradient over the output gradient it then reduces; MobileFaceNet's
# conv_1 here), which the backbones' stock path avoids: symbols/prelu_stock.py, tests/test_prelu_stock.py.
@pytest.mark.parametrize("name", ["iresnet_tiny", "mobilefacenet"])
def test_a_training_step_has_the_same_numbers_with_either_kernel(name):
    (emb_stock, stock), (emb_fused, fused), (_, imperative) = step_gradients(twins(name, imperative=True))
    assert emb_stock.tobytes() == emb_fused.tobytes()
    for n, g in stock.items():
        h = fused[n]
        if n.endswith("_alpha"):  # hybridized and imperative runs round differently: 1e-4 of the largest seen
            ref = imperative[n]
            np.testing.assert_allclose(h, ref, rtol=0, atol=1e-3 * np.abs(ref).max(), err_msg=n)
        else:  # every other gradient comes through the bit-identical input gradients
            assert g.tobytes() == h.tobytes(), n


def test_symbols_and_exported_files_have_the_stock_operator(tmp_path):
    stock, fused = twins("iresnet_tiny")
    assert "pfc_prelu" not in fused(mx.sym.var("data")).tojson()  # a symbolic call: legacy save, ONNX
    stock.export(str(tmp_path / "stock"))
    fused.export(str(tmp_path / "fused"))
    assert prelu.fused_in(fused)  # the cached graph keeps the fused kernel after the export
    nodes = json.loads(fused._cached_graph[1].tojson())["nodes"]
    kernels = [n for n in nodes if n["op"] == "pfc_prelu"]  # each reads a plain-layout Reshape (symbols/plain_layout.py)
    assert kernels and all(nodes[n["inputs"][0][0]]["op"] == "Reshape" for n in kernels)
    graphs = [json.loads((tmp_path / f"{k}-symbol.json").read_text())["nodes"] for k in ("stock", "fused")]
    def shape(nodes):  # unnamed operators (cast0, ...) are numbered per process, not per graph
        return [(n["op"], n["inputs"], n["name"] if n["op"] in ("null", "LeakyReLU") else None) for n in nodes]

    assert shape(graphs[0]) == shape(graphs[1])
    relus = [n for n in graphs[1] if n["op"] == "LeakyReLU"]
    assert relus and all(n["attrs"] == {"act_type": "prelu"} for n in relus)
    loaded = mx.gluon.SymbolBlock.imports(str(tmp_path / "fused-symbol.json"), ["data"],
                                          str(tmp_path / "fused-0000.params"))
    images = mx.nd.array(np.random.default_rng(3).uniform(0, 255, (2, 3, 112, 112)))
    assert loaded(images).asnumpy().tobytes() == fused(images).asnumpy().tobytes()


def test_only_written_float32_slopes_on_the_cpu_get_the_fused_kernel():
    prelu.set_kernels("auto")
    try:
        assert prelu.use_fused(mx.cpu()) and not prelu.use_fused(mx.gpu(0))
        prelu.set_kernels("fused")
        with pytest.raises(ValueError, match="need a CPU context"):
            prelu.use_fused(mx.gpu(0))
        prelu.set_kernels("auto")
        net = symbols.get_model("iresnet_tiny", embedding_size=8)
        net.initialize()
        for name, p in net.collect_params().items():
            if name.endswith("_alpha"):
                p.grad_req = "null"  # frozen slopes: a library operator could not leave their gradient alone
        net.hybridize()
        net(mx.nd.zeros((1, 3, 112, 112)))
        assert not prelu.fused_in(net)
        with pytest.raises(ValueError, match="PReLU kernels must be"):
            prelu.set_kernels("fast")
    finally:
        prelu.set_kernels(None)


def test_without_a_compiler_auto_falls_back_and_fused_says_why(tmp_path):
    code = """
        import logging; logging.basicConfig(level=logging.WARNING)
        import mxnet as mx, symbols
        from symbols import prelu
        net = symbols.get_model("iresnet_tiny", embedding_size=8); net.initialize(); net.hybridize()
        net(mx.nd.zeros((1, 3, 112, 112)))
        print("fused in graph:", prelu.fused_in(net))
        prelu.set_kernels("fused")
        try:
            prelu.use_fused(mx.cpu())
        except RuntimeError as e:
            print("fused:", e)
        """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PFC_MX_CACHE": str(tmp_path), "CXX": "no-such-compiler",
                                 "PFC_MX_KERNELS": "auto"}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "fused in graph: False" in result.stdout
    assert "fused: PReLU kernels 'fused' but they cannot be loaded: no C++ compiler" in result.stdout
