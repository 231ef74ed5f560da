"""symbols: raw RGB (B, 3, 112, 112) → (B, D) float32 for every backbone; hybridize, export, train."""
from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

import symbols
from pfc_mx.errors import ModelError

# one small member of each family (grouped convolutions are slow on the CPU: a 2-1-1-1 MobileFaceNet)
SMALL = {"iresnet_tiny": ("iresnet_tiny", {}),
         "mobilefacenet_2111": ("mobilefacenet", {"blocks": (2, 1, 1, 1), "scale": 1}),
         "gluoncv_resnet18_v1b": ("gluoncv:resnet18_v1b", {})}


def randomised(net: gluon.HybridBlock, seed: int = 0) -> gluon.HybridBlock:
    """net initialised with random weights AND random BN statistics / gammas (a non-trivial eval output)."""
    mx.random.seed(seed)
    net.initialize(mx.init.Xavier(magnitude=2))
    net(mx.nd.zeros((1, 3, 112, 112)))          # finish deferred shapes
    rng = np.random.RandomState(seed)
    for name, p in net.collect_params().items():
        if name.endswith(("_gamma", "_running_var")):
            p.set_data(mx.nd.array(rng.uniform(0.5, 1.5, p.shape)))
        elif name.endswith(("_beta", "_running_mean")):
            p.set_data(mx.nd.array(rng.normal(0, 0.1, p.shape)))
    return net


def images(batch: int = 2, seed: int = 1) -> mx.nd.NDArray:
    return mx.nd.array(np.random.RandomState(seed).randint(0, 256, (batch, 3, 112, 112)), dtype="float32")


def test_registry_lists_the_published_backbones_and_the_tiny_one():
    assert {"iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200", "iresnet_tiny",
            "mobilefacenet"} <= set(symbols.list_models())


def test_unknown_name_raises_one_model_error_listing_valid_names():
    with pytest.raises(ModelError, match="unknown model 'resnet9000'.*iresnet100.*mobilefacenet.*gluoncv:"):
        symbols.get_model("resnet9000")


@pytest.mark.parametrize("name, kw, message", [
    ("iresnet50", {"depth": 3}, "depth"),
    ("iresnet50", {"embedding_size": 0}, "embedding_size"),
    ("mobilefacenet", {"dropout": 1.5}, "dropout"),
    ("gluoncv:no_such_net", {}, "no_such_net"),
    ("iresnet_tiny", {"units": (1, 1), "channels": (8, 8, 8)}, "unit"),
])
def test_bad_options_raise_model_error(name, kw, message):
    with pytest.raises(ModelError, match=message):
        symbols.get_model(name, **kw)


@pytest.mark.parametrize("name, emb", [("iresnet_tiny", 128), ("iresnet18", 512), ("mobilefacenet", 512),
                                       ("gluoncv:mobilenetv2_0.25", 256), ("gluoncv:resnet18_v1b", 64)])
def test_forward_gives_batch_by_embedding_float32(name, emb):
    net = symbols.get_model(name, embedding_size=emb)
    net.initialize(mx.init.Xavier())
    out = net(images(2))
    assert out.shape == (2, emb) and out.dtype == np.float32
    assert np.isfinite(out.asnumpy()).all()


@pytest.mark.parametrize("name", ["iresnet34", "iresnet50", "iresnet100", "iresnet200"])
def test_large_backbones_infer_batch_by_embedding(name):
    # shape inference on the symbol: the 100- and 200-layer nets are too slow to run on 2 CPU cores in a test
    sym = symbols.get_model(name)(mx.sym.var("data"))
    _, out_shapes, _ = sym.infer_shape(data=(2, 3, 112, 112))
    out_types = sym.infer_type(data="float32")[1]
    assert out_shapes == [(2, 512)] and out_types == [np.float32]


def test_iresnet50_runs_a_real_forward():
    net = symbols.get_model("iresnet50", embedding_size=128)
    net.initialize(mx.init.Xavier())
    assert net(images(1)).shape == (1, 128)


def test_first_layer_feeds_the_body_normalised_input_for_uint8_and_float32():
    net = randomised(symbols.get_model("iresnet_tiny"))
    seen = []
    net.body.register_forward_pre_hook(lambda block, inputs: seen.append(inputs[0].asnumpy()))
    x = images(2)
    out_float = net(x)
    out_uint8 = net(x.astype("uint8"))
    expected = (x.asnumpy() - 127.5) * 0.0078125
    np.testing.assert_allclose(seen[0], expected, rtol=0, atol=1e-7)
    np.testing.assert_allclose(seen[1], expected, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(out_float.asnumpy(), out_uint8.asnumpy())


@pytest.mark.parametrize("case", SMALL)
def test_hybridized_output_equals_imperative(case):
    name, kw = SMALL[case]
    net = randomised(symbols.get_model(name, embedding_size=64, **kw))
    x = images(4)
    eval_ref = net(x).asnumpy()
    with autograd.train_mode():
        train_ref = net(x).asnumpy()
    net.hybridize(static_alloc=True, static_shape=True)
    np.testing.assert_allclose(net(x).asnumpy(), eval_ref, rtol=1e-5, atol=1e-5)
    with autograd.train_mode():
        # batch statistics of 4 samples in fc1 amplify float32 rounding (fused kernels when hybridized)
        np.testing.assert_allclose(net(x).asnumpy(), train_ref, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("case", SMALL)
def test_export_then_load_checkpoint_reproduces_output_at_fc1_output(case, tmp_path):
    name, kw = SMALL[case]
    net = randomised(symbols.get_model(name, embedding_size=64, **kw))
    net.hybridize(static_alloc=True, static_shape=True)
    x = images(2)
    expected = net(x).asnumpy()
    net.export(str(tmp_path / "model"))
    sym, arg, aux = mx.model.load_checkpoint(str(tmp_path / "model"), 0)
    mod = mx.mod.Module(sym.get_internals()["fc1_output"], data_names=["data"], label_names=None,
                        context=mx.cpu())
    mod.bind([("data", x.shape)], for_training=False)
    mod.set_params(arg, aux)
    mod.forward(mx.io.DataBatch([x]), is_train=False)
    np.testing.assert_allclose(mod.get_outputs()[0].asnumpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["iresnet_tiny", "mobilefacenet_2111"])
def test_gradient_reaches_every_trainable_parameter(case):
    name, kw = SMALL[case]
    net = randomised(symbols.get_model(name, embedding_size=32, **kw))
    net.hybridize(static_alloc=True, static_shape=True)
    weights = mx.nd.array(np.random.RandomState(2).normal(size=(4, 32)))
    with autograd.record():
        loss = (net(images(4)) * weights).sum()
    loss.backward()
    trainable = {n: p for n, p in net.collect_params().items() if p.grad_req != "null"}
    dead = [n for n, p in trainable.items() if not np.abs(p.grad().asnumpy()).sum() > 0]
    assert len(trainable) > 50 and dead == []
    frozen = {n for n, p in net.collect_params().items() if p.grad_req == "null"}
    assert all(n.endswith(("_running_mean", "_running_var")) or n == "fc1_gamma" for n in frozen)


@pytest.mark.parametrize("name", ["iresnet_tiny", "mobilefacenet"])
def test_fp16_runs_the_body_in_float16_and_returns_float32(name):
    # MXNet has no float16 GEMM on the CPU, so the types are checked by inference on the graph
    net = symbols.get_model(name, fp16=True)
    sym = net(mx.sym.var("data"))
    arg_types, out_types, _ = sym.infer_type(data="uint8")
    types = dict(zip(sym.list_arguments(), arg_types))
    first_conv = "conv0_weight" if name == "iresnet_tiny" else "conv_1_conv2d_weight"
    assert types[first_conv] == np.float16
    assert types["pre_fc1_weight"] == np.float32 and out_types == [np.float32]


@pytest.mark.parametrize("case", SMALL)
def test_parameter_names_are_the_same_in_every_instance(case):
    name, kw = SMALL[case]
    first, second = symbols.get_model(name, **kw), symbols.get_model(name, **kw)
    assert list(first.collect_params().keys()) == list(second.collect_params().keys())


def test_head_nodes_carry_the_legacy_names_and_dropout_sits_before_pre_fc1():
    sym = symbols.get_model("iresnet_tiny", dropout=0.4)(mx.sym.var("data"))
    outputs = sym.get_internals().list_outputs()
    assert sym.list_outputs() == ["fc1_output"]
    assert outputs.index("bn1_output") < outputs.index("dropout0_output") < outputs.index("pre_fc1_output")
    assert "relu0_alpha" in sym.list_arguments() and "stage4_unit1_conv1sc_weight" in sym.list_arguments()
