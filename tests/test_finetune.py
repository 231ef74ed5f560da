"""Fine-tuning (model.pretrained): an insightface MobileFaceNet "y1" as insightface wrote it, trained
on 2 real ranks, exported to ONNX and checked; a backbone that does not fit stops with one line."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

import symbols
from pfc_mx import checkpoint
from pfc_mx.config import load_config
from pfc_mx.export import MIN_COSINE, export_onnx
from pfc_mx.train.pretrained import load_backbone_weights
from pfc_mx.errors import ConfigError
from tests.legacy_fixtures import cosines, images, make_checkpoint, module_forward
from tests.ranks import ROOT, TRAIN, launch, rank_env, synthetic



@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return synthetic(tmp_path_factory, num_identities=12, images_per_identity=6, holdout_identities=6, num_pairs=20,
                     bin_name="synthetic_val")


@pytest.fixture(scope="module")
def y1(tmp_path_factory) -> str:
    return make_checkpoint(tmp_path_factory.mktemp("y1"), "y1", seed=0)


def overrides(data: Path, out: Path, *extra: str) -> list:
    return ["--set", f"data.rec={data}", f"output.dir={out}", "data.batch_size=8", "data.num_workers=0",
            "optim.max_steps=3", "optim.lr=0.001", "optim.warmup_epochs=0", "output.checkpoint_every=3",
            "output.log_every=1", "eval.every=0", "output.tensorboard=false", *extra]


@pytest.mark.dist
def test_legacy_mobilefacenet_fine_tunes_on_two_ranks_and_exports(data, y1, tmp_path):
    out = tmp_path / "run"
    proc = launch(TRAIN + overrides(data, out, "model.name=mobilefacenet_mxnet", "model.embedding_size=128",
                                    f"model.pretrained={y1},0"), timeout=600)
    summary = json.loads(proc.stdout.split("summary: ", 1)[1].splitlines()[0])
    assert summary["steps"] == 3 and np.isfinite(summary["final_loss"])
    assert "backbone initialised from" in proc.stdout and "class centers start fresh" in proc.stdout
    report = export_onnx(out, tmp_path / "tuned.onnx", batch_check=2)
    assert report["min_cosine"] >= MIN_COSINE[False] and report["embedding_size"] == 128
    # three small steps from the insightface weights: the weights barely moved (the BatchNorm
    # statistics follow the new data), and the embeddings are still close to the original ones
    _, tuned_args, _ = mx.model.load_checkpoint(str(out / "checkpoints" / "step-00000003" / "backbone"), 0)
    _, args, _ = mx.model.load_checkpoint(y1, 0)
    for name in ("conv_1_conv2d_weight", "res_4_block5_conv_dw_conv2d_weight", "pre_fc1_bias"):
        a, b = args[name].asnumpy(), tuned_args[name].asnumpy()
        assert np.linalg.norm(a - b) < 0.02 * np.linalg.norm(a), name
    assert np.array_equal(args["fc1_weight"].asnumpy().shape, tuned_args["pre_fc1_weight"].shape)
    x = images(4, seed=21)
    import onnxruntime as ort
    session = ort.InferenceSession(str(tmp_path / "tuned.onnx"), providers=["CPUExecutionProvider"])
    tuned = session.run(None, {"data": x})[0]
    original = module_forward(y1, 0, x)
    assert cosines(tuned, original).min() > 0.5
    random = symbols.get_model("mobilefacenet_mxnet", embedding_size=128)
    random.initialize()
    assert np.abs(cosines(random(mx.nd.array(x)).asnumpy(), original)).max() < 0.3
    state = checkpoint.check_integrity(out / "checkpoints" / "step-00000003")
    assert state["world_size"] == 2 and state["model"] == "mobilefacenet_mxnet"


@pytest.mark.parametrize("extra, message", [
    (["model.name=mobilefacenet_mxnet", "model.embedding_size=512"],
     "its embedding size is 128, model.embedding_size is 512"),
    (["model.name=iresnet_demo", "model.embedding_size=128", "data.num_workers=1"],   # workers end too
     "holds an insightface mobilefacenet backbone, model.name iresnet_demo is an iresnet"),
    (["model.name=mobilefacenet", "model.embedding_size=128"], "does not fit model.name mobilefacenet: "),
])
def test_a_backbone_that_does_not_fit_stops_with_one_line_and_exit_2(data, y1, tmp_path, extra, message):
    proc = subprocess.run(TRAIN + overrides(data, tmp_path / "run", *extra, f"model.pretrained={y1},0"),
                          cwd=ROOT, env=rank_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(err) == 1 and message in err[0] and "model.pretrained" in err[0], proc.stderr[-3000:]


def test_our_checkpoint_initialises_the_backbone_and_a_model_mismatch_is_one_line(tmp_path):
    from tests.test_export import make_run, random_backbone
    net = random_backbone("iresnet_tiny")
    step = make_run(tmp_path / "run", net)
    (step / "state.json").write_text(json.dumps({"model": "iresnet_tiny", "num_classes": 5, "embedding_size": 512}))
    fresh = symbols.get_model("iresnet_tiny", embedding_size=512)
    fresh.initialize()
    fresh(mx.nd.zeros((1, 3, 112, 112)))
    state = load_backbone_weights(fresh, str(tmp_path / "run"), "iresnet_tiny", 512)
    assert state["num_classes"] == 5
    x = mx.nd.array(images(2, seed=3))
    assert cosines(fresh(x).asnumpy(), net(x).asnumpy()).min() >= 0.99999
    with pytest.raises(ConfigError, match="holds a iresnet_tiny backbone, model.name is iresnet18"):
        load_backbone_weights(fresh, str(tmp_path / "run"), "iresnet18", 512)
    (step / "state.json").write_text(json.dumps({"model": "iresnet_tiny", "num_classes": 5, "embedding_size": 512,
                                                 "files": {"backbone-0000.params": "0" * 64}}))
    with pytest.raises(ConfigError, match=r"model.pretrained = .*checksum mismatch in backbone-0000.params"):
        load_backbone_weights(fresh, str(tmp_path / "run"), "iresnet_tiny", 512)  # a damaged checkpoint is refused


def test_centers_come_from_our_checkpoint_only_when_the_classes_match(data, tmp_path):
    def train(out, *extra):
        proc = subprocess.run(TRAIN + overrides(data, out, "optim.max_steps=2", "output.checkpoint_every=2",
                                                "model.name=iresnet_tiny", *extra),
                              cwd=ROOT, env=rank_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout + proc.stderr

    first = tmp_path / "first"
    train(first)
    saved = checkpoint.check_integrity(first / "checkpoints" / "step-00000002")
    centers, _ = checkpoint.load_centers(first / "checkpoints" / "step-00000002", 0, saved["num_classes"], 128)
    log = train(tmp_path / "same", f"model.pretrained={first}", "optim.lr=0.000000000001", "optim.momentum=0")
    assert "class centers loaded from" in log
    tuned, _ = checkpoint.load_centers(tmp_path / "same" / "checkpoints" / "step-00000002", 0,
                                       saved["num_classes"], 128)
    np.testing.assert_allclose(tuned, centers, rtol=1e-4, atol=1e-6)     # lr ~0, no momentum: the loaded centers stay
    log = train(tmp_path / "more", f"model.pretrained={first}", f"data.num_classes={saved['num_classes'] + 3}")
    assert f"class centers start fresh (the checkpoint has {saved['num_classes']} classes" in log


def test_model_pretrained_paths_are_relative_to_the_config(tmp_path):
    (tmp_path / "c.yaml").write_text("model:\n  pretrained: old/model,0\n")
    assert load_config(tmp_path / "c.yaml").model.pretrained == f"{tmp_path.resolve()}/old/model,0"
