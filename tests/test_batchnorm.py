"""symbols.batchnorm: the fused training-mode BatchNorm against NumPy and MXNet's BatchNorm; which graphs get it."""
from __future__ import annotations

import json

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

import symbols
from pfc_mx import kernels
from symbols import batchnorm, prelu
from symbols.common import MEAN, SCALE

EPS, MOMENTUM = 2e-5, 0.9
# odd shapes: one channel, batch 1 and 2, odd H·W, one element per channel and batch, a 2-D input,
# and a mean far from zero (the variance must not cancel)
CASES = [((1, 1, 3, 3), 0.0), ((2, 3, 5, 7), 0.0), ((1, 4, 1, 1), 0.0), ((2, 5), 0.0), ((3, 6, 9, 11), 0.0),
         ((2, 16, 33, 35), 0.0), ((2, 3, 5, 7), 300.0)]


@pytest.fixture(autouse=True, scope="module")
def loaded():
    """The kernels must build on every machine the suite runs on (setup installs g++): fail, never skip."""
    assert kernels.load(), kernels.unavailable_reason()
    yield
    batchnorm.set_kernels(None)


def inputs(shape, offset, seed=0):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = (rng.standard_normal(shape) * rng.uniform(0.5, 3, (1, c) + (1,) * (len(shape) - 2)) + offset).astype(np.float32)
    gamma, beta = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    mean, var = rng.standard_normal(c).astype(np.float32), rng.uniform(0.5, 2, c).astype(np.float32)
    return x, gamma, beta, mean, var, rng.standard_normal(shape).astype(np.float32)


def run(op, x, gamma, beta, mean, var, dy, fix_gamma):
    """(y, dx, dgamma, dbeta, moving mean, moving var) after one recorded forward and backward."""
    xs, g, b, mm, mv = (mx.nd.array(v) for v in (x, gamma, beta, mean, var))
    for a in (xs, g, b):
        a.attach_grad()
    kwargs = dict(eps=EPS, momentum=MOMENTUM, fix_gamma=fix_gamma)
    with autograd.record():
        if op == "fused":
            y = mx.nd.pfc_batchnorm(xs, g, b, mm, mv, **kwargs)[0]
        else:
            y = mx.nd.BatchNorm(xs, g, b, mm, mv, **kwargs)
    y.backward(mx.nd.array(dy))
    return [a.asnumpy() for a in (y, xs.grad, g.grad, b.grad, mm, mv)]


def numpy_batchnorm(x, gamma, beta, mean, var, dy, fix_gamma):
    """The same six arrays in float64 (training mode: the batch's mean and biased variance)."""
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    axes = tuple(k for k in range(x.ndim) if k != 1)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    n = x.size // x.shape[1]
    mu, v = x.mean(axis=axes), x.var(axis=axes)
    g = np.ones_like(gamma, dtype=np.float64) if fix_gamma else gamma.astype(np.float64)
    xhat = (x - mu.reshape(shape)) / np.sqrt(v + EPS).reshape(shape)
    y = g.reshape(shape) * xhat + beta.reshape(shape)
    dbeta, dgamma = dy.sum(axis=axes), (dy * xhat).sum(axis=axes)
    dx = (g / np.sqrt(v + EPS)).reshape(shape) * (dy - (dbeta / n).reshape(shape) - xhat * (dgamma / n).reshape(shape))
    moving_mean = mean * MOMENTUM + mu * (1 - MOMENTUM)
    moving_var = var * MOMENTUM + v * (1 - MOMENTUM)
    # the magnitudes of the terms each result sums (the tolerances scale with them: dx cancels when n is small)
    k = np.abs(g / np.sqrt(v + EPS)).reshape(shape)
    terms = [np.abs(g.reshape(shape) * xhat) + np.abs(beta.reshape(shape)),
             k * (np.abs(dy) + np.abs(dbeta / n).reshape(shape) + np.abs(xhat * (dgamma / n).reshape(shape))),
             np.abs(dy * xhat).sum(axis=axes), np.abs(dy).sum(axis=axes),
             np.abs(mean) + np.abs(mu), np.abs(var) + v]
    return [y, dx, np.zeros_like(dgamma) if fix_gamma else dgamma, dbeta, moving_mean, moving_var], terms


NAMES = ("y", "dx", "dgamma", "dbeta", "moving_mean", "moving_var")


@pytest.mark.parametrize("fix_gamma", [False, True])
@pytest.mark.parametrize("shape, offset", CASES)
def test_fused_batchnorm_matches_numpy_and_mxnet(shape, offset, fix_gamma):
    args = inputs(shape, offset)
    ref, terms = numpy_batchnorm(*args, fix_gamma)
    fused = run("fused", *args, fix_gamma)
    stock = run("stock", *args, fix_gamma)
    for name, r, t, f, s in zip(NAMES, ref, terms, fused, stock):
        # float32 results: within 1e-5 of the magnitude of the terms they sum (a few float roundings).
        # MXNet's own results are held to the same bound, but for a mean far from zero 10x that: its
        # (oneDNN's) variance loses digits to the mean there, ours sums x - x[0, c, 0]
        tol = 1e-5 * t.max()
        np.testing.assert_allclose(f, r, rtol=0, atol=tol, err_msg=f"fused {name}")
        np.testing.assert_allclose(s, r, rtol=0, atol=tol * (10 if offset else 1), err_msg=f"MXNet {name}")
    if fix_gamma:
        assert not fused[2].any()


def test_moving_statistics_follow_mxnets_rule_and_roundings():
    """From the batch mean and invstd the forward output, the update is MXNet's CPU one bit for bit:
    moving = moving·momentum + batch·(1 − momentum) in float32, the batch variance 1/invstd² − eps."""
    x, gamma, beta, mean, var, dy = inputs((4, 8, 6, 6), 0.5, seed=3)
    xs, g, b, mm, mv = (mx.nd.array(v) for v in (x, gamma, beta, mean, var))
    for a in (xs, g, b):
        a.attach_grad()
    with autograd.record():
        y, batch_mean, invstd = mx.nd.pfc_batchnorm(xs, g, b, mm, mv, eps=EPS, momentum=MOMENTUM)
    y.backward(mx.nd.array(dy))  # (the backward leaves them alone)
    f32 = np.float32
    minus = f32(1) - f32(MOMENTUM)
    inv = invstd.asnumpy()
    variance = (1.0 / (inv * inv).astype(np.float64) - EPS).astype(f32)
    assert mm.asnumpy().tobytes() == (mean * f32(MOMENTUM) + batch_mean.asnumpy() * minus).tobytes()
    assert mv.asnumpy().tobytes() == (var * f32(MOMENTUM) + variance * minus).tobytes()
    ref, _ = numpy_batchnorm(x, gamma, beta, mean, var, dy, False)  # and the batch statistics are right
    np.testing.assert_allclose(batch_mean.asnumpy(), x.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(variance, x.astype(np.float64).var(axis=(0, 2, 3)), rtol=1e-5)


def test_a_training_forward_updates_the_moving_statistics_once():
    """Updated by the forward (declared written: readers wait for it); MXNet's CPU BatchNorm does it in
    its backward, which gives the same values whenever a backward follows, as in training."""
    x, gamma, beta, mean, var, _ = inputs((2, 3, 4, 5), 0.0)
    mm, mv = mx.nd.array(mean), mx.nd.array(var)
    with autograd.train_mode():
        out = mx.nd.pfc_batchnorm(mx.nd.array(x), mx.nd.array(gamma), mx.nd.array(beta), mm, mv, eps=EPS,
                                  momentum=MOMENTUM)
    np.testing.assert_allclose(mm.asnumpy(), mean * MOMENTUM + x.mean(axis=(0, 2, 3)) * (1 - MOMENTUM), rtol=1e-6)
    np.testing.assert_allclose(mv.asnumpy(), var * MOMENTUM + x.var(axis=(0, 2, 3)) * (1 - MOMENTUM), rtol=1e-5)
    out[0].wait_to_read()


def test_bad_shapes_and_attributes_are_errors():
    x, one = mx.nd.ones((2, 3, 4)), mx.nd.ones((3,))
    with pytest.raises(mx.MXNetError, match="must be \\(C,\\)"):
        mx.nd.pfc_batchnorm(x, mx.nd.ones((2,)), one, one, one).wait_to_read()
    with pytest.raises(mx.MXNetError, match="eps must be a positive number"):
        mx.nd.pfc_batchnorm(x, one, one, one, one, eps=0)[0].wait_to_read()


def test_ill_conditioned_input_gradient_is_closer_to_float64_than_mxnets():
    """dy nearly affine in the normalised x (as in a network): dx cancels to a small remainder."""
    x, gamma, beta, mean, var, noise = inputs((8, 16, 28, 28), 0.3)
    xhat = (x - x.mean(axis=(0, 2, 3), keepdims=True)) / x.std(axis=(0, 2, 3), keepdims=True)
    dy = (2 * xhat + 0.5 + 1e-3 * noise).astype(np.float32)
    ref, _ = numpy_batchnorm(x, gamma, beta, mean, var, dy, False)
    errors = [np.abs(run(op, x, gamma, beta, mean, var, dy, False)[1] - ref[1]).max() / np.abs(ref[1]).max()
              for op in ("fused", "stock")]
    assert errors[0] < 1e-3 and errors[0] < errors[1], errors  # measured: 2.5e-4 against MXNet's 2.2e-3


def twins(name: str = "iresnet_tiny"):
    """Two copies of one initialised backbone, hybridized; training graphs with the stock and the fused BatchNorm."""
    mx.random.seed(0)  # the weights (Xavier) do not depend on what ran before in this process
    nets = []
    for choice in ("stock", "fused"):
        batchnorm.set_kernels(choice)
        net = symbols.get_model(name, embedding_size=16)
        net.initialize(mx.init.Xavier())
        if nets:
            for p, q in zip(nets[0].collect_params().values(), net.collect_params().values()):
                q.set_data(p.data())
        net.hybridize(static_alloc=True, static_shape=True)
        net(mx.nd.zeros((1, 3, 112, 112)))  # the first graph (prediction) fixes the kernels of both
        nets.append(net)
    batchnorm.set_kernels(None)
    rng = np.random.default_rng(1)
    for p in nets[0].collect_params().values():  # trained-looking BatchNorm parameters and statistics
        if p.name.endswith(("_gamma", "_running_var")):
            p.set_data(mx.nd.array(rng.uniform(0.5, 1.5, p.shape)))
        elif p.name.endswith(("_beta", "_running_mean")):
            p.set_data(mx.nd.array(rng.uniform(-0.5, 0.5, p.shape)))
    for p, q in zip(nets[0].collect_params().values(), nets[1].collect_params().values()):
        q.set_data(p.data())
    return nets


def train_step(net, images, head):
    with autograd.record():
        emb = net(images)
    emb.backward(head)
    return emb.asnumpy(), {n: p.grad().asnumpy() for n, p in net.collect_params().items() if p.grad_req != "null"}


# bound: measured 1.4e-4 (IResNet) of each gradient's largest against 1.1e-2 for the stock graph;
# MobileFaceNet 1e-2 to 3e-2 for both (its linear BatchNorms stay MXNet's and dominate)
@pytest.mark.parametrize("name, bound, better", [("iresnet_tiny", 1e-3, True), ("mobilefacenet", 5e-2, False)])
def test_a_training_step_then_prediction_match_the_stock_backbone(name, bound, better):
    """Embeddings and gradients against a float64 copy of the network (MXNet's operators one by one),
    closer than MXNet's own float32 BatchNorm gets; the same moving statistics after the step as the
    stock graph's; prediction (moving statistics: the stock graph) equal to the stock block's."""
    stock, fused = twins(name)
    rng = np.random.default_rng(2)
    images = mx.nd.array(rng.uniform(0, 255, (8, 3, 112, 112)))
    head = mx.nd.array(rng.standard_normal((8, 16)))
    (emb_s, grads_s), (emb_f, grads_f) = train_step(stock, images, head), train_step(fused, images, head)
    assert batchnorm.fused_in(fused) and not batchnorm.fused_in(stock)
    ref = symbols.get_model(name, embedding_size=16)
    ref.initialize()
    ref.cast("float64")
    for p, q in zip(stock.collect_params().values(), ref.collect_params().values()):
        q.set_data(p.data().astype("float64"))
    with autograd.record():  # the body and head of Backbone's forward, without its cast to float32
        emb = ref.head(ref.body((images.astype("float64") - MEAN) * SCALE))
    emb.backward(head.astype("float64"))
    emb_64 = emb.asnumpy()
    np.testing.assert_allclose(emb_f, emb_64, rtol=0, atol=1e-5 * np.abs(emb_64).max())
    largest = max(np.abs(p.grad().asnumpy()).max() for p in ref.collect_params().values() if p.grad_req != "null")
    worst = {"fused": 0.0, "stock": 0.0}
    for n, p in ref.collect_params().items():
        if p.grad_req == "null":
            continue
        g = p.grad().asnumpy()
        if np.abs(g).max() < 1e-9 * largest:  # 0 in exact arithmetic (a shift before a BatchNorm): rounding noise
            assert np.abs(grads_f[n]).max() < 1e-3 * largest, n
            continue
        for kind, grads in (("fused", grads_f), ("stock", grads_s)):
            worst[kind] = max(worst[kind], np.abs(grads[n] - g).max() / np.abs(g).max())
    # MXNet's BatchNorm input gradient cancels (test_ill_conditioned_input_gradient): the fused graph is closer
    assert worst["fused"] < bound and worst["stock"] < 5e-2 and (worst["fused"] <= worst["stock"] or not better), worst
    stats = [{n: p.data().asnumpy() for n, p in net.collect_params().items() if "_running_" in n}
             for net in (stock, fused)]
    assert stats[0] and stats[0].keys() == stats[1].keys()
    moved = 0
    for n, v in stats[0].items():
        np.testing.assert_allclose(stats[1][n], v, rtol=1e-5, atol=1e-6, err_msg=n)
        moved += n in {"stage1_unit1_bn2_running_mean", "bn0_running_var"}
    predicted = [net(images).asnumpy() for net in (stock, fused)]  # outside autograd: moving statistics
    assert not batchnorm.fused_in(fused)  # the prediction graph is the stock one
    np.testing.assert_allclose(predicted[1], predicted[0], rtol=0, atol=1e-5 * np.abs(predicted[0]).max())
    with autograd.record():  # back to training: the training graph again, still fused
        fused(images).wait_to_read()
    assert batchnorm.fused_in(fused)


def test_prediction_uses_the_moving_statistics_not_the_batch():
    """After the same training steps, a Backbone's prediction (stock graph, moving statistics) is the stock one's."""
    stock, fused = twins()
    rng = np.random.default_rng(4)
    images = mx.nd.array(rng.uniform(0, 255, (3, 3, 112, 112)))
    head = mx.nd.array(rng.standard_normal((3, 16)))
    for _ in range(2):
        train_step(stock, images, head)
        train_step(fused, images, head)
    a, b = fused(images[:1]).asnumpy(), stock(images[:1]).asnumpy()  # batch statistics would differ with batch 1
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())
    single = fused(images[:1])
    with autograd.train_mode():  # the batch's statistics: something else
        assert np.abs(fused(images[:1]).asnumpy() - single.asnumpy()).max() > 1e-2 * np.abs(b).max()


def test_exported_files_have_the_stock_operator(tmp_path):
    stock, fused = twins()
    images = mx.nd.array(np.random.default_rng(3).uniform(0, 255, (2, 3, 112, 112)))
    with autograd.record():
        fused(images).wait_to_read()
    assert batchnorm.fused_in(fused)
    fused.export(str(tmp_path / "fused"))
    assert batchnorm.fused_in(fused)  # the cached graph keeps the fused kernel after the export
    nodes = json.loads((tmp_path / "fused-symbol.json").read_text())["nodes"]
    assert not [n for n in nodes if n["op"].startswith("pfc_")]
    assert not [n for n in nodes if n["name"].endswith("_plain")]  # plain_layout's Reshapes bypassed
    norms = [n for n in nodes if n["op"] == "BatchNorm"]
    assert norms and all(n["attrs"]["eps"] == "2e-05" and n["attrs"]["momentum"] == "0.9" for n in norms)
    loaded = mx.gluon.SymbolBlock.imports(str(tmp_path / "fused-symbol.json"), ["data"],
                                          str(tmp_path / "fused-0000.params"))
    expected = fused(images).asnumpy()  # the Backbone's prediction graph (oneDNN may pick other kernels there)
    np.testing.assert_allclose(loaded(images).asnumpy(), expected, rtol=0, atol=1e-6 * np.abs(expected).max())


def test_the_default_training_graph_keeps_mxnet_batchnorm():
    """Opt-in: by default ('auto') a CPU training graph has MXNet's BatchNorm (the fused PReLU still runs)."""
    batchnorm.set_kernels(None)
    net = symbols.get_model("iresnet_tiny", embedding_size=8)
    net.initialize()
    net.hybridize()
    with autograd.record():
        net(mx.nd.zeros((1, 3, 112, 112)))
    assert not batchnorm.fused_in(net) and prelu.fused_in(net)


def test_only_float32_cpu_training_graphs_with_written_gradients_get_the_fused_kernel():
    batchnorm.set_kernels("auto")
    try:
        assert not batchnorm.use_fused(mx.cpu()) and not batchnorm.use_fused(mx.gpu(0))
        batchnorm.set_kernels("fused")
        assert batchnorm.use_fused(mx.cpu())
        with pytest.raises(ValueError, match="need a CPU context"):
            batchnorm.use_fused(mx.gpu(0))
        net = symbols.get_model("iresnet_tiny", embedding_size=8)
        net.initialize()
        for name, p in net.collect_params().items():
            if name.endswith("_beta"):
                p.grad_req = "null"  # frozen: a library operator could not leave the gradient alone
        net.hybridize()
        with autograd.record():
            net(mx.nd.zeros((1, 3, 112, 112)))
        assert not batchnorm.fused_in(net)
        with pytest.raises(ValueError, match="BatchNorm kernels must be"):
            batchnorm.set_kernels("fast")
    finally:
        batchnorm.set_kernels(None)


def test_the_kernels_in_force_at_the_first_graph_hold_for_both():
    batchnorm.set_kernels("fused")
    prelu.set_kernels("stock")
    try:
        net = symbols.get_model("iresnet_tiny", embedding_size=8)
        net.initialize()
        net.hybridize()
        net(mx.nd.zeros((1, 3, 112, 112)))  # the prediction graph, under these choices
    finally:
        batchnorm.set_kernels(None)
        prelu.set_kernels(None)  # 'auto' would fuse the PReLU
    with autograd.record():  # the training graph, built now
        net(mx.nd.zeros((1, 3, 112, 112)))
    assert batchnorm.fused_in(net) and not prelu.fused_in(net)


@pytest.mark.dist
def test_two_ranks_average_the_fused_batchnorms_statistics_as_one_process(tmp_path):
    """Horovod's averaging of the running statistics (pfc_mx.train.sync) after a step with pfc_batchnorm."""
    from tests.dist_cases.training import fused_backbone, stats_of
    from tests.ranks import run_ranks

    expected = np.mean([stats_of(fused_backbone(r)[0]) for r in range(2)], axis=0)
    for res in run_ranks("fused_backbone_sync", tmp_path):
        assert bool(res["fused"])
        np.testing.assert_allclose(res["stats"], expected, rtol=1e-5, atol=1e-6)
