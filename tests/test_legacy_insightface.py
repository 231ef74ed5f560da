"""insightface's own MXNet checkpoints (tests/data/legacy: JSON as MXNet 0.12 / 1.0 / 1.4 wrote it)
import exactly, export to ONNX, and wrong files fail with one line.

Reference: mx.model.load_checkpoint + mx.mod.Module on the original files (tests/legacy_fixtures.py).
"""
from __future__ import annotations

import json
import shutil

import mxnet as mx
import onnx
import pytest

import symbols
from pfc_mx.cli import export_onnx as export_tool, run_cli
from pfc_mx.errors import ModelError
from pfc_mx.evaluation.model_loader import load_embedder, onnx_takes_raw_pixels
from pfc_mx.export import MIN_COSINE, export_onnx
from symbols.iresnet import IResNet
from symbols.legacy import legacy_symbol
from symbols.mobilefacenet import MobileFaceNet
from tests.legacy_fixtures import DATA, cosines, images, make_checkpoint, module_forward
from tests.weights import cosine_between_inputs

FIXTURES = {"r34": (1200, "attr"), "r100": (10400, "attrs"), "r100s": (10400, "attrs"), "y1": (10000, "attrs")}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("legacy")
    return {name: make_checkpoint(root / name, name, seed=i) for i, name in enumerate(("r34", "r100s", "y1"))}


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_fixtures_keep_insightface_json_conventions(name):
    text = (DATA / f"{name}-symbol.json").read_text()
    graph = json.loads(text)
    version, key = FIXTURES[name]
    assert graph["attrs"] == {"mxnet_version": ["int", version]}
    assert {k for n in graph["nodes"] for k in n} <= {"op", "name", "inputs", key}
    assert {"nodes", "arg_nodes", "node_row_ptr", "heads"} <= set(graph)
    names = [n["name"] for n in graph["nodes"]]
    assert names[:4] == (["data", "_minusscalar0", "_mulscalar0", "conv_1_conv2d_weight"] if name == "y1"
                         else ["data", "id", "_minusscalar0", "_mulscalar0"])
    fc = [n for n in graph["nodes"] if n["op"] == "FullyConnected"]
    assert [n["name"] for n in fc] == ["pre_fc1"] and "flatten" not in fc[0][key]
    assert graph["nodes"][graph["heads"][0][0]]["name"] == "fc1"
    if name == "y1":   # the April 2018 fmobilefacenet: its pre_fc1 weight is a variable called fc1_weight
        weight = graph["nodes"][fc[0]["inputs"][1][0]]
        assert weight["name"] == "fc1_weight" and weight[key]["__shape__"] == "(128, 512)"
        assert all("eps" not in n[key] for n in graph["nodes"] if n["op"] == "BatchNorm" and n["name"] != "fc1")


@pytest.mark.parametrize("name, family, config", [
    ("r34", IResNet, {"units": (3, 4, 6, 3), "embedding_size": 512}),
    ("r100s", IResNet, {"units": (1, 2, 2, 1), "embedding_size": 512}),
    ("y1", MobileFaceNet, {"blocks": (1, 4, 6, 2), "scale": 1, "embedding_size": 128, "insightface_mxnet": True}),
])
def test_import_gives_the_module_embeddings_of_the_original_files(checkpoints, name, family, config):
    prefix = checkpoints[name]
    x = images(3, seed=2)
    want = module_forward(prefix, 0, x)
    assert cosine_between_inputs(lambda z: module_forward(prefix, 0, z)) < 0.9     # the weights see the image
    net = symbols.import_legacy(prefix, 0)
    assert isinstance(net, family) and config.items() <= net.config.items()
    assert cosines(net(mx.nd.array(x)).asnumpy(), want).min() >= 0.99999
    net.hybridize()
    assert cosines(net(mx.nd.array(x)).asnumpy(), want).min() >= 0.99999


def test_full_r100_symbol_has_exactly_the_tensors_of_our_iresnet100():
    theirs = mx.sym.load(str(DATA / "r100-symbol.json"))
    ours = legacy_symbol(symbols.get_model("iresnet100"))
    shapes = []
    for sym in (theirs, ours):
        args, _, auxs = sym.infer_shape(data=(1, 3, 112, 112))
        shapes.append(dict(zip(sym.list_arguments() + sym.list_auxiliary_states(), args + auxs)))
    assert shapes[0] == shapes[1] and len(shapes[0]) == 7 + 49 * 15 + 4 * 5 + 10


def test_y1_weights_load_without_the_symbol_file(checkpoints, tmp_path):
    prefix = str(tmp_path / "y1")
    shutil.copy(f"{checkpoints['y1']}-0000.params", f"{prefix}-0000.params")
    x = images(2, seed=3)
    net = symbols.load_legacy_checkpoint(prefix, 0)        # fc1_weight found by name, eps as insightface's
    assert cosines(net(mx.nd.array(x)).asnumpy(), module_forward(checkpoints["y1"], 0, x)).min() >= 0.99999
    named = symbols.load_legacy_checkpoint(prefix, 0, name="mobilefacenet_mxnet")  # the 128-d size from fc1_weight
    assert cosines(named(mx.nd.array(x)).asnumpy(), module_forward(checkpoints["y1"], 0, x)).min() >= 0.99999


def test_other_legacy_models_load_as_a_symbol_block(checkpoints, tmp_path):
    # a model we have no Gluon family for: the r100s graph with its layers renamed
    text = (DATA / "r100s-symbol.json").read_text().replace('"stage', '"block')
    prefix = str(tmp_path / "other")
    (tmp_path / "other-symbol.json").write_text(text)
    saved = mx.nd.load(f"{checkpoints['r100s']}-0000.params")
    mx.nd.save(f"{prefix}-0000.params", {k.replace(":stage", ":block"): v for k, v in saved.items()})
    x = images(2, seed=4)
    net = symbols.import_legacy(prefix, 0)
    assert isinstance(net, mx.gluon.SymbolBlock)
    want = module_forward(checkpoints["r100s"], 0, x)
    assert cosines(net(mx.nd.array(x)).asnumpy(), want).min() >= 0.99999
    assert cosines(load_embedder(f"{prefix},0")(x), want).min() >= 0.99999
    report = export_onnx(f"{prefix},0", tmp_path / "other.onnx", batch_check=2)
    assert report["min_cosine"] >= MIN_COSINE[False]


@pytest.mark.parametrize("name", ["r34", "r100s", "y1"])
def test_onnx_export_matches_module_at_any_batch(checkpoints, name, tmp_path):
    import onnxruntime as ort

    out = tmp_path / f"{name}.onnx"
    report = export_onnx(f"{checkpoints[name]},0", out, batch_check=2)
    assert report["min_cosine"] >= MIN_COSINE[False]
    model = onnx.load(str(out))
    assert onnx_takes_raw_pixels(model)                    # insightface's ArcFaceONNX: input_mean 0, input_std 1
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        x = images(n, seed=10 + n)
        got = session.run(None, {"data": x})[0]
        assert cosines(got, module_forward(checkpoints[name], 0, x)).min() >= 0.99999


def test_export_tool_on_a_legacy_model(checkpoints, tmp_path, capsys):
    assert run_cli(export_tool.main, [f"{checkpoints['y1']},0", str(tmp_path / "y1.onnx"), "--batch-check", "2"]) == 0
    assert "min cosine" in capsys.readouterr().out


def test_failed_export_exits_2_with_one_line_and_leaves_no_file(checkpoints, tmp_path, monkeypatch, capsys):
    from pfc_mx.export import graph

    monkeypatch.setattr(graph, "MXNET_DEFAULTS", {})      # the exporter's reading of a missing `flatten`
    for extra in ([], ["--no-check"]):
        out = tmp_path / "bad.onnx"
        assert run_cli(export_tool.main, [f"{checkpoints['r100s']},0", str(out), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "onnxruntime" in err, err
        assert not list(tmp_path.glob("bad.onnx*"))


def test_wrong_files_give_one_model_error_line(tmp_path):
    mx.nd.save(str(tmp_path / "foreign-0000.params"), {"arg:features_weight": mx.nd.ones((2, 3))})
    with pytest.raises(ModelError, match="foreign-symbol.json not found .*not an IResNet or MobileFaceNet"):
        symbols.import_legacy(str(tmp_path / "foreign"), 0)
    (tmp_path / "foreign-symbol.json").write_text("{not json")
    with pytest.raises(ModelError, match="foreign-symbol.json: not an MXNet symbol file") as e:
        symbols.import_legacy(str(tmp_path / "foreign"), 0)
    assert "\n" not in str(e.value)
    data = mx.sym.var("data")
    mx.sym.FullyConnected(data, num_hidden=2, name="embedding").save(str(tmp_path / "foreign-symbol.json"))
    with pytest.raises(ModelError, match="no fc1 node; expected an insightface recognition model"):
        symbols.import_legacy(str(tmp_path / "foreign"), 0)
    mx.nd.save(str(tmp_path / "mbf-0000.params"), {"arg:conv_1_conv2d_weight": mx.nd.ones((64, 3, 3, 3))})
    with pytest.raises(ModelError, match="not an insightface MobileFaceNet checkpoint"):
        symbols.import_legacy(str(tmp_path / "mbf"), 0)


def test_our_saved_mobilefacenet_imports_as_itself(tmp_path):
    from tests.test_export import random_backbone
    net = random_backbone("mobilefacenet", seed=6)
    symbols.save_backbone(net, str(tmp_path / "backbone"))
    loaded = symbols.import_legacy(str(tmp_path / "backbone"), 0)
    assert isinstance(loaded, MobileFaceNet) and loaded.config["scale"] == 2
    assert not loaded.config["insightface_mxnet"] and loaded.config["blocks"] == (1, 4, 6, 2)
    x = mx.nd.array(images(2, seed=7))
    assert cosines(loaded(x).asnumpy(), net(x).asnumpy()).min() >= 0.99999
