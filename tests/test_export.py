"""ONNX export: parity with MXNet, insightface's conventions, dynamic batch, fp16, legacy models, errors."""
from __future__ import annotations

from pathlib import Path

import cv2
import mxnet as mx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

import symbols
from pfc_mx.cli import export_onnx as export_tool, run_cli
from pfc_mx.errors import ExportError, ModelError
from pfc_mx.evaluation.model_loader import load_embedder, onnx_takes_raw_pixels, resolve_checkpoint
from pfc_mx.export import MIN_COSINE, export_onnx, normalisation_constants, parity
from tests.test_ijb import make_pooling_onnx, pooling_features
from tests.weights import cosine_between_inputs, input_dependent


def random_backbone(name: str, seed: int = 0) -> symbols.Backbone:
    """An initialised backbone with random gammas (the fixed one of fc1 stays 1), betas and PReLU
    slopes, and BatchNorm statistics calibrated on random images (tests/weights.py), so that its
    embeddings depend on the input and parity cannot pass by accident of identity layers."""
    mx.random.seed(seed)
    net = symbols.get_model(name, embedding_size=512)
    net.initialize(mx.init.Xavier(magnitude=2.0))
    input_dependent(net, seed)
    net.hybridize()
    return net


def make_run(root: Path, net: symbols.Backbone) -> Path:
    """<root>/checkpoints/step-00000007/backbone-* and a `latest` naming it, as training writes them."""
    step = root / "checkpoints" / "step-00000007"
    step.mkdir(parents=True)
    symbols.save_backbone(net, str(step / "backbone"))
    (root / "checkpoints" / "latest").write_text("step-00000007\n")
    return step


def images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, size=(n, 3, 112, 112)).astype(np.float32)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def run_onnx(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def iresnet(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    net = random_backbone("iresnet_tiny")
    step = make_run(root, net)
    report = export_onnx(root, root / "model.onnx", batch_check=2)
    return net, root, step, report


def test_iresnet_checkpoint_export_passes_parity_at_any_batch(iresnet):
    net, root, _, report = iresnet
    assert report["min_cosine"] >= MIN_COSINE[False] and report["max_abs_diff"] < 1e-3
    for n in (1, 3):                                       # dynamic batch, against the Gluon net itself
        x = images(n, seed=n)
        got = run_onnx(root / "model.onnx", x)
        want = net(mx.nd.array(x)).asnumpy()
        assert got.shape == (n, 512)
        assert cosines(got, want).min() > 0.99999
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


def test_exported_model_follows_insightface_recognition_conventions(iresnet):
    _, root, _, _ = iresnet
    model = onnx.load(str(root / "model.onnx"))
    graph = model.graph
    assert [n.op_type for n in graph.node[:2]] == ["Sub", "Mul"]
    assert graph.node[0].name.startswith("Sub") and graph.node[1].name.startswith("Mul")
    assert list(graph.node[0].input)[0] == graph.input[0].name == "data"
    assert normalisation_constants(model) == (127.5, 0.0078125)
    assert onnx_takes_raw_pixels(model)                    # insightface's ArcFaceONNX rule: input_mean 0, std 1
    initializers = {t.name for t in graph.initializer}
    assert [i.name for i in graph.input] == ["data"] and not initializers & {i.name for i in graph.input}
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 3, 112, 112]
    assert len(graph.output) == 1
    assert [d.dim_param or d.dim_value for d in graph.output[0].type.tensor_type.shape.dim] == ["N", 512]
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 13)]
    onnx.checker.check_model(model, full_check=True)


def test_insightface_style_blob_from_bgr_images_gives_the_mxnet_embedding(iresnet):
    # ArcFaceONNX.get_feat: cv2.dnn.blobFromImages(bgr, 1/input_std, (112, 112), input_mean, swapRB=True)
    net, root, _, _ = iresnet
    rgb = images(2, seed=5).astype(np.uint8)
    bgr = [np.ascontiguousarray(im.transpose(1, 2, 0)[:, :, ::-1]) for im in rgb]
    blob = cv2.dnn.blobFromImages(bgr, 1.0, (112, 112), (0.0, 0.0, 0.0), swapRB=True)
    got = run_onnx(root / "model.onnx", blob)
    assert cosines(got, net(mx.nd.array(rgb.astype(np.float32))).asnumpy()).min() > 0.99999


def test_mobilefacenet_export_passes_parity(tmp_path):
    net = random_backbone("mobilefacenet", seed=3)
    assert cosine_between_inputs(lambda x: net(mx.nd.array(x)).asnumpy()) < 0.9   # the weights see the image
    step = make_run(tmp_path / "run", net)
    report = export_onnx(step, tmp_path / "mbf.onnx", batch_check=2)
    assert report["min_cosine"] >= MIN_COSINE[False] and report["embedding_size"] == 512
    x = images(3, seed=7)
    assert cosines(run_onnx(tmp_path / "mbf.onnx", x), net(mx.nd.array(x)).asnumpy()).min() > 0.99999


def test_legacy_insightface_checkpoint_exports(tmp_path):
    net = random_backbone("iresnet_tiny", seed=4)
    symbols.save_legacy_checkpoint(net, str(tmp_path / "old" / "model"), 3)
    report = export_onnx(f"{tmp_path / 'old' / 'model'},3", tmp_path / "old.onnx", batch_check=2)
    assert report["epoch"] == 3 and report["min_cosine"] >= MIN_COSINE[False]
    x = images(2, seed=8)
    assert cosines(run_onnx(tmp_path / "old.onnx", x), net(mx.nd.array(x)).asnumpy()).min() > 0.99999


def test_fp16_export_keeps_float32_interface_and_passes_its_threshold(iresnet, tmp_path):
    net, root, _, _ = iresnet
    report = export_onnx(root, tmp_path / "fp16.onnx", fp16=True, batch_check=2)
    assert report["min_cosine"] >= MIN_COSINE[True] == 0.999
    model = onnx.load(str(tmp_path / "fp16.onnx"))
    graph = model.graph
    head = set(graph.node[0].input[1:]) | set(graph.node[1].input)
    floats = {TensorProto.FLOAT, TensorProto.FLOAT16}    # (Reshape shapes are int64)
    assert {t.data_type for t in graph.initializer if t.name not in head and t.data_type in floats} == {
        TensorProto.FLOAT16}
    assert graph.input[0].type.tensor_type.elem_type == graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert onnx_takes_raw_pixels(model)
    x = images(3, seed=9)
    got = run_onnx(tmp_path / "fp16.onnx", x)
    assert got.dtype == np.float32 and cosines(got, net(mx.nd.array(x)).asnumpy()).min() > 0.999
    assert (tmp_path / "fp16.onnx").stat().st_size < 0.6 * (root / "model.onnx").stat().st_size


def test_parity_check_fails_below_threshold(iresnet):
    _, root, _, _ = iresnet
    rng = np.random.RandomState(0)
    with pytest.raises(ExportError, match="parity check failed: min cosine"):
        parity(lambda x: rng.randn(len(x), 512).astype(np.float32), root / "model.onnx", batch=2)


def test_graph_without_input_normalisation_is_rejected_and_nothing_written(tmp_path):
    data = mx.sym.var("data")
    fc1 = mx.sym.FullyConnected(mx.sym.flatten(data), num_hidden=8, name="fc1")
    args = {"fc1_weight": mx.nd.ones((8, 3 * 112 * 112)), "fc1_bias": mx.nd.zeros(8)}
    mx.model.save_checkpoint(str(tmp_path / "plain"), 0, fc1, args, {})
    with pytest.raises(ExportError, match="does not start with the input normalisation"):
        export_onnx(f"{tmp_path / 'plain'},0", tmp_path / "plain.onnx")
    assert not list(tmp_path.glob("plain.onnx*"))


def test_resolve_checkpoint_accepts_every_source_form(iresnet):
    _, root, step, _ = iresnet
    want = (str(step / "backbone"), 0)
    for source in (root, root / "checkpoints", root / "checkpoints" / "latest", step,
                   f"{step / 'backbone'},0", step / "backbone-0000.params"):
        prefix, epoch = resolve_checkpoint(source)
        assert (str(Path(prefix).resolve()), epoch) == (str(Path(want[0]).resolve()), 0), source


@pytest.mark.parametrize("source, message", [
    ("{tmp}/nowhere", "no such model"),
    ("{tmp}/nowhere,0", "nowhere-symbol.json not found"),
    ("{tmp}/model,last", "integer epoch"),
    ("{tmp}", "no backbone-symbol.json, latest or checkpoints/latest"),
])
def test_wrong_model_path_is_one_line_model_error(tmp_path, source, message):
    with pytest.raises(ModelError, match=message) as e:
        load_embedder(source.format(tmp=tmp_path))
    assert "\n" not in str(e.value)


def test_latest_pointing_at_missing_checkpoint_is_model_error(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("step-00000009\n")
    with pytest.raises(ModelError, match="step-00000009, which has no backbone-symbol.json"):
        resolve_checkpoint(tmp_path)


def test_mxnet_embedder_reproduces_the_gluon_net(iresnet):
    net, root, _, _ = iresnet
    x = images(3, seed=11)
    got = load_embedder(root, ctx=mx.cpu())(x.astype(np.uint8))
    np.testing.assert_allclose(got, net(mx.nd.array(x)).asnumpy(), rtol=1e-4, atol=1e-5)


def test_onnx_embedder_normalises_input_only_for_models_without_sub_mul(tmp_path):
    with_head = make_pooling_onnx(tmp_path / "raw.onnx")
    model = onnx.load(str(with_head))
    del model.graph.node[:2]                              # the same pooling, expecting (x - 127.5) / 127.5
    model.graph.node[0].input[0] = "data"
    onnx.save(model, str(tmp_path / "normalised.onnx"))
    x = images(2, seed=12)
    np.testing.assert_allclose(load_embedder(with_head)(x), pooling_features(x), rtol=1e-5, atol=1e-6)
    want = pooling_features(x) / (127.5 * 0.0078125)      # scale 1/127.5 instead of 0.0078125
    np.testing.assert_allclose(load_embedder(tmp_path / "normalised.onnx")(x), want, rtol=1e-5, atol=1e-6)


def test_export_tool_default_output_and_exit_codes(iresnet, capsys):
    _, root, step, _ = iresnet
    assert run_cli(export_tool.main, [str(root), "--batch-check", "1"]) == 0
    out = capsys.readouterr().out
    assert (step / "backbone.onnx").is_file() and "min cosine" in out and "opset 13" in out
    assert run_cli(export_tool.main, [str(root / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "missing" in err and "\n" not in err
