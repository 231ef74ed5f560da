"""symbols.legacy: insightface MXNet checkpoints load into our IResNet, and ours load in legacy code.

The reference is a legacy-style IResNet written here with mx.sym, independently of symbols/,
after insightface's fresnet.py (residual_unit_v3, input version 1, output "E"):
BN eps 2e-5, PReLU as LeakyReLU(act_type='prelu'), fc1 with fix_gamma=True.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import mxnet as mx
import numpy as np
import pytest

import symbols
from pfc_mx.errors import ModelError
from symbols.iresnet import SPECS
from symbols.legacy import legacy_names, legacy_symbol, load_legacy_checkpoint, save_legacy_checkpoint


@pytest.fixture(autouse=True)
def unfused_executors(monkeypatch):
    # MKLDNN's inference fusion (conv + BN folded) rounds differently from the unfused graph by
    # ~1e-5 over 18 layers; these tests compare graphs and weights, so executors run unfused.
    monkeypatch.setenv("MXNET_SUBGRAPH_BACKEND", "NONE")


def legacy_iresnet(units: Sequence[int], channels: Sequence[int], emb: int) -> mx.sym.Symbol:
    def bn(x, name, fix_gamma=False):
        return mx.sym.BatchNorm(x, fix_gamma=fix_gamma, eps=2e-5, momentum=0.9, name=name)

    def conv(x, c, k, stride, name):
        return mx.sym.Convolution(x, num_filter=c, kernel=(k, k), stride=(stride, stride), pad=(k // 2, k // 2),
                                  no_bias=True, name=name)

    def prelu(x, name):
        return mx.sym.LeakyReLU(x, act_type="prelu", name=name)

    body = mx.sym.identity(mx.sym.var("data"), name="id")
    body = (body - 127.5) * 0.0078125
    body = prelu(bn(conv(body, channels[0], 3, 1, "conv0"), "bn0"), "relu0")
    for i, (n, c) in enumerate(zip(units, channels), start=1):
        for j in range(1, n + 1):
            u, stride = f"stage{i}_unit{j}", 2 if j == 1 else 1
            x = prelu(bn(conv(bn(body, u + "_bn1"), c, 3, 1, u + "_conv1"), u + "_bn2"), u + "_relu1")
            x = bn(conv(x, c, 3, stride, u + "_conv2"), u + "_bn3")
            shortcut = bn(conv(body, c, 1, stride, u + "_conv1sc"), u + "_sc") if j == 1 else body
            body = x + shortcut
    body = mx.sym.Dropout(bn(body, "bn1"), p=0.4)
    return bn(mx.sym.FullyConnected(body, num_hidden=emb, name="pre_fc1"), "fc1", fix_gamma=True)


def random_params(sym: mx.sym.Symbol, seed: int = 0) -> Tuple[Dict[str, mx.nd.NDArray], Dict[str, mx.nd.NDArray]]:
    """Random weights, BN gammas/betas/statistics and PReLU slopes for sym at 112×112."""
    rng = np.random.RandomState(seed)
    arg_shapes, _, aux_shapes = sym.infer_shape(data=(1, 3, 112, 112))

    def draw(name, shape):
        if name.endswith("_weight"):
            return rng.normal(0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
        if name.endswith(("_moving_var", "_gamma")) and "relu" not in name:
            return rng.uniform(0.5, 1.5, shape)
        if "relu" in name:
            return rng.uniform(0.0, 0.5, shape)
        return rng.normal(0, 0.1, shape)
    args = {n: mx.nd.array(draw(n, s)) for n, s in zip(sym.list_arguments(), arg_shapes) if n != "data"}
    auxs = {n: mx.nd.array(draw(n, s)) for n, s in zip(sym.list_auxiliary_states(), aux_shapes)}
    return args, auxs


def module_forward(sym, args, auxs, x):
    mod = mx.mod.Module(sym, data_names=["data"], label_names=None, context=mx.cpu())
    mod.bind([("data", x.shape)], for_training=False)
    mod.set_params(args, auxs)
    mod.forward(mx.io.DataBatch([x]), is_train=False)
    return mod.get_outputs()[0].asnumpy()


def images(batch=2, seed=1):
    return mx.nd.array(np.random.RandomState(seed).randint(0, 256, (batch, 3, 112, 112)), dtype="float32")


def calibrate_fc1(sym, args, auxs, x):
    """Set fc1's moving variance to the spread of pre_fc1 on x, so that the embedding is O(1)."""
    pre_fc1 = module_forward(sym.get_internals()["pre_fc1_output"], args, auxs, x)
    auxs["fc1_moving_var"][:] = float(pre_fc1.var())


def write_legacy(tmp_path, units, channels, emb, extra=None):
    sym = legacy_iresnet(units, channels, emb)
    args, auxs = random_params(sym)
    calibrate_fc1(sym, args, auxs, images(2))
    args.update(extra or {})
    prefix = str(tmp_path / "legacy")
    mx.model.save_checkpoint(prefix, 0, sym, args, auxs)
    return prefix, sym, args, auxs


@pytest.mark.parametrize("spec", ["iresnet_tiny", "iresnet18"])
def test_legacy_checkpoint_loads_into_our_iresnet_with_the_same_output(spec, tmp_path):
    units, channels = SPECS[spec]
    # a training checkpoint also holds the classifier fc7: it must be ignored
    prefix, sym, args, auxs = write_legacy(tmp_path, units, channels, 128,
                                           extra={"fc7_weight": mx.nd.ones((10, 128))})
    net = load_legacy_checkpoint(prefix, 0)          # depth, channels and embedding size from the names
    assert net.config["units"] == units and net.config["channels"] == channels
    assert (net.collect_params()["fc1_gamma"].data().asnumpy() == 1).all()   # fixed gamma: 1 whatever the file says
    x = images(2)
    expected = module_forward(sym, args, auxs, x)
    assert 0.1 < np.abs(expected).mean() < 10        # a non-trivial output of order 1
    np.testing.assert_allclose(net(x).asnumpy(), expected, rtol=1e-5, atol=1e-5)


def test_legacy_checkpoint_loads_by_name_and_into_a_given_net(tmp_path):
    prefix, sym, args, auxs = write_legacy(tmp_path, *SPECS["iresnet_tiny"], 64)
    x = images(2)
    expected = module_forward(sym, args, auxs, x)
    by_name = load_legacy_checkpoint(prefix, 0, name="iresnet_tiny")
    given = load_legacy_checkpoint(prefix, 0, net=symbols.get_model("iresnet_tiny", embedding_size=64))
    for net in (by_name, given):
        np.testing.assert_allclose(net(x).asnumpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_registered_iresnet_maps_onto_exactly_the_legacy_tensors(name):
    units, channels = SPECS[name]
    theirs = legacy_iresnet(units, channels, 512)
    ours = legacy_symbol(symbols.get_model(name))
    assert ours.list_outputs() == ["fc1_output"]
    assert set(ours.list_auxiliary_states()) == set(theirs.list_auxiliary_states())
    shapes = []
    for sym in (theirs, ours):
        arg_shapes, _, aux_shapes = sym.infer_shape(data=(1, 3, 112, 112))
        shapes.append(dict(zip(sym.list_arguments() + sym.list_auxiliary_states(), arg_shapes + aux_shapes)))
    assert shapes[0] == shapes[1]


@pytest.mark.filterwarnings("ignore:Cannot decide type")  # the input is cast, so its type is free
def test_saved_checkpoint_runs_in_plain_module_and_symbolblock_with_our_output(tmp_path):
    prefix, *_ = write_legacy(tmp_path, *SPECS["iresnet_tiny"], 128)
    net = load_legacy_checkpoint(prefix, 0)
    x = images(2)
    expected = net(x).asnumpy()
    ours = str(tmp_path / "ours")
    save_legacy_checkpoint(net, ours, epoch=3)
    sym, args, auxs = mx.model.load_checkpoint(ours, 3)
    assert sym.list_outputs() == ["fc1_output"]
    theirs = legacy_iresnet(*SPECS["iresnet_tiny"], 128)
    assert set(args) == set(theirs.list_arguments()) - {"data"}
    assert set(auxs) == set(theirs.list_auxiliary_states())
    np.testing.assert_allclose(module_forward(sym.get_internals()["fc1_output"], args, auxs, x), expected,
                               rtol=1e-5, atol=1e-5)
    imported = mx.gluon.SymbolBlock.imports(f"{ours}-symbol.json", ["data"], f"{ours}-0003.params")
    np.testing.assert_allclose(imported(x).asnumpy(), expected, rtol=1e-5, atol=1e-5)
    # and the legacy model written by our code is legacy-loadable by our code again
    np.testing.assert_allclose(load_legacy_checkpoint(ours, 3)(x).asnumpy(), expected, rtol=1e-6, atol=1e-6)


def test_fp16_backbone_is_saved_as_float32_with_the_same_weights(tmp_path):
    net16 = symbols.get_model("iresnet_tiny", fp16=True)
    net16.initialize(mx.init.Xavier())
    save_legacy_checkpoint(net16, str(tmp_path / "m"))
    _, args, auxs = mx.model.load_checkpoint(str(tmp_path / "m"), 0)
    assert {a.dtype for a in list(args.values()) + list(auxs.values())} == {np.float32}
    net32 = load_legacy_checkpoint(str(tmp_path / "m"), 0)
    assert not net32.fp16
    for (name, p16), p32 in zip(net16.collect_params().items(), net32.collect_params().values()):
        np.testing.assert_array_equal(p16.data().astype("float32").asnumpy(), p32.data().asnumpy(), err_msg=name)


def test_missing_tensor_raises_one_model_error_naming_it(tmp_path):
    sym = legacy_iresnet(*SPECS["iresnet_tiny"], 64)
    args, auxs = random_params(sym)
    del args["stage2_unit1_conv1sc_weight"], auxs["bn1_moving_var"]
    mx.model.save_checkpoint(str(tmp_path / "m"), 0, sym, args, auxs)
    with pytest.raises(ModelError, match=r"m-0000\.params: missing tensor 'stage2_unit1_conv1sc_weight'.*1 more"):
        load_legacy_checkpoint(str(tmp_path / "m"), 0, name="iresnet_tiny")


def test_misshaped_tensor_raises_one_model_error_naming_it(tmp_path):
    prefix, *_ = write_legacy(tmp_path, *SPECS["iresnet_tiny"], 64, extra={"pre_fc1_weight": mx.nd.ones((64, 100))})
    with pytest.raises(ModelError, match=r"tensor 'pre_fc1_weight' has shape \(64, 100\), pre_fc1_weight needs "
                                         r"\(64, 3136\)$"):
        load_legacy_checkpoint(prefix, 0, name="iresnet_tiny")


def test_missing_or_foreign_files_raise_model_error(tmp_path):
    with pytest.raises(ModelError, match="no such parameter file"):
        load_legacy_checkpoint(str(tmp_path / "absent"), 0)
    (tmp_path / "junk-0000.params").write_bytes(b"not a params file")
    with pytest.raises(ModelError, match="junk-0000.params: not a readable"):
        load_legacy_checkpoint(str(tmp_path / "junk"), 0)
    mx.nd.save(str(tmp_path / "other-0000.params"), {"arg:features_conv_weight": mx.nd.ones((2, 3, 3, 3))})
    with pytest.raises(ModelError, match="not an insightface IResNet or MobileFaceNet checkpoint"):
        load_legacy_checkpoint(str(tmp_path / "other"), 0)


@pytest.mark.parametrize("name, kw, legacy_format", [
    ("iresnet_tiny", {}, True),
    ("mobilefacenet", {"blocks": (2, 1, 1, 1), "scale": 1}, True),
    ("gluoncv:resnet18_v1b", {}, False),
])
def test_save_backbone_then_load_backbone_gives_the_same_output(name, kw, legacy_format, tmp_path):
    net = symbols.get_model(name, embedding_size=32, **kw)
    net.initialize(mx.init.Xavier())
    x = images(2)
    expected = net(x).asnumpy()
    symbols.save_backbone(net, str(tmp_path / "backbone"))
    _, args, auxs = mx.model.load_checkpoint(str(tmp_path / "backbone"), 0)
    assert all(n.endswith("_moving_mean") or n.endswith("_moving_var") for n in auxs) == legacy_format
    loaded = symbols.load_backbone(str(tmp_path / "backbone"), name, embedding_size=32, **kw)
    np.testing.assert_allclose(loaded(x).asnumpy(), expected, rtol=1e-6, atol=1e-6)
    assert set(legacy_names(loaded)) == set(loaded.collect_params().keys())
