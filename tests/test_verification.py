"""`.bin` verification: insightface's 10-fold metric, flip-averaged embeddings, the eval tool."""
from __future__ import annotations

import numpy as np
import pytest

import mxnet as mx

from pfc_mx.data.verification_bin import load_bin, write_bin
from pfc_mx.errors import DatasetError
from pfc_mx.evaluation.verification import THRESHOLDS, embed, ten_fold_accuracy, verify
from tests.test_ijb import make_pooling_onnx
from pfc_mx.cli import eval_verification, run_cli


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    return make_pooling_onnx(tmp_path_factory.mktemp("onnx") / "pool.onnx")


def pairs_at_distances(distances, dim=8, seed=0):
    """(2P, dim) embeddings, not unit length, whose pairs have the given squared L2 distances once normalised."""
    rng = np.random.RandomState(seed)
    out = []
    for d in distances:
        basis = np.linalg.qr(rng.randn(dim, dim))[0][:, :2]       # a random plane in R^dim
        cos = 1.0 - d / 2.0
        a, b = np.array([1.0, 0.0]), np.array([cos, np.sqrt(1.0 - cos * cos)])
        out += [basis @ a * rng.uniform(0.5, 3), basis @ b * rng.uniform(0.5, 3)]
    return np.array(out)


def reference_ten_fold(emb, issame, nfolds=10):
    """insightface's calculate_roc, written with loops: (accuracy per fold, threshold per fold)."""
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    dist = np.sum((emb[0::2] - emb[1::2]) ** 2, axis=1)
    folds = np.array_split(np.arange(len(issame)), nfolds)   # KFold without shuffle: consecutive, larger first
    accs, thresholds = [], []
    for k in range(nfolds):
        test = folds[k]
        train = np.concatenate([folds[j] for j in range(nfolds) if j != k])
        best, best_acc = None, -1.0
        for t in np.arange(0, 4, 0.01):
            acc = np.mean((dist[train] < t) == issame[train])
            if acc > best_acc:
                best, best_acc = t, acc
        accs.append(np.mean((dist[test] < best) == issame[test]))
        thresholds.append(best)
    return np.array(accs), np.array(thresholds)


def test_ten_fold_accuracy_matches_hand_computed_example():
    # 20 pairs, 10 folds of two consecutive pairs. Same pairs lie at squared distance 0.443,
    # different pairs at >= 1.0, except pair 0: "same" but at 1.5. Every fold then picks 0.45,
    # the smallest grid value above 0.443; fold 0 misclassifies pair 0 (accuracy 1/2), the
    # other nine are perfect: mean (0.5 + 9) / 10 = 0.95, std sqrt((0.45² + 9·0.05²) / 10) = 0.15.
    issame = np.array([True, False] * 10)
    distances = np.where(issame, 0.443, np.linspace(1.0, 1.4, 20))
    distances[0] = 1.5
    acc, std, threshold = ten_fold_accuracy(pairs_at_distances(distances), issame)
    assert acc == pytest.approx(0.95, abs=1e-12)
    assert std == pytest.approx(0.15, abs=1e-12)
    assert threshold == pytest.approx(0.45, abs=1e-12)


def test_hard_pair_costs_accuracy_only_in_its_own_fold():
    issame = np.array([True, False] * 10)
    distances = np.where(issame, 0.3, 1.2)
    distances[19] = 0.2                                   # a different pair that looks the same: last fold
    acc, std, _ = ten_fold_accuracy(pairs_at_distances(distances), issame)
    assert acc == pytest.approx(0.95) and std == pytest.approx(0.15)


def test_ten_fold_accuracy_equals_loop_reference_on_random_data():
    rng = np.random.RandomState(1)
    issame = rng.rand(303) < 0.5                          # folds of unequal size (31 × 3, 30 × 7)
    emb = rng.randn(606, 16)
    emb[1::2] = np.where(issame[:, None], emb[0::2] + rng.randn(303, 16) * 0.9, emb[1::2])
    acc, std, threshold = ten_fold_accuracy(emb, issame)
    ref_acc, ref_thr = reference_ten_fold(emb, issame)
    assert acc == pytest.approx(ref_acc.mean(), abs=1e-12)
    assert std == pytest.approx(ref_acc.std(), abs=1e-12)
    assert threshold == pytest.approx(ref_thr.mean(), abs=1e-12)
    assert 0.6 < acc < 1.0                                # a case where the threshold matters


def test_threshold_grid_is_insightfaces():
    assert len(THRESHOLDS) == 400 and THRESHOLDS[0] == 0 and THRESHOLDS[-1] == pytest.approx(3.99)


def toy_forward(x):
    """A fixed 'network' that depends on left/right: (B, 3, H, W) -> (B, 6)."""
    x = x.asnumpy()
    w = x.shape[-1]
    left, right = x[..., : w // 2].mean(axis=(2, 3)), x[..., w // 2:].mean(axis=(2, 3))
    return mx.nd.array(np.concatenate([left - 100, 2 * right - 120], axis=1))


def test_embed_sums_image_and_mirror_then_normalises_across_batches():
    rng = np.random.RandomState(2)
    images = rng.randint(0, 256, size=(10, 3, 8, 8)).astype(np.uint8)
    got = embed(toy_forward, images, batch_size=4, flip=True)
    x = images.astype(np.float32)
    raw = toy_forward(mx.nd.array(x)).asnumpy() + toy_forward(mx.nd.array(x[..., ::-1].copy())).asnumpy()
    want = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert got.dtype == np.float32
    no_flip = embed(lambda b: toy_forward(b).asnumpy(), images, batch_size=3, flip=False)   # numpy output works too
    plain = toy_forward(mx.nd.array(x)).asnumpy()
    np.testing.assert_allclose(no_flip, plain / np.linalg.norm(plain, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, no_flip)


def test_verify_reads_bin_and_reports_protocol_numbers(tmp_path):
    rng = np.random.RandomState(3)
    images = rng.randint(0, 256, size=(40, 3, 16, 16)).astype(np.uint8)
    issame = rng.rand(20) < 0.5
    path = write_bin(tmp_path / "toy.bin", images, issame, ext=".png")
    result = verify(toy_forward, path, batch_size=8)
    loaded, same = load_bin(path, image_size=(112, 112))
    acc, std, thr = ten_fold_accuracy(embed(toy_forward, loaded, batch_size=8), same)
    assert result == {"name": "toy", "accuracy": acc, "std": std, "threshold": thr, "pairs": 20}


def test_eval_verification_tool_prints_table_for_onnx_model(tmp_path, capsys, tiny_onnx):
    rng = np.random.RandomState(4)
    images = rng.randint(0, 256, size=(24, 3, 112, 112)).astype(np.uint8)
    images[1::2] = np.clip(images[0::2].astype(int) + rng.randint(-5, 6, images[0::2].shape), 0, 255)
    issame = np.ones(12, bool)
    issame[::3] = False
    images[1::6] = rng.randint(0, 256, size=images[1::6].shape)     # the "different" pairs are different
    write_bin(tmp_path / "data" / "a.bin", images, issame, ext=".png")
    write_bin(tmp_path / "data" / "b.bin", images[:12], issame[:6], ext=".png")
    assert run_cli(eval_verification.main, [str(tiny_onnx), str(tmp_path / "data"), "--batch-size", "5"]) == 0
    out = capsys.readouterr().out
    assert "a " in out and "b " in out and "100.00%" in out


def test_eval_verification_tool_exits_2_on_missing_bin_and_wrong_model(tmp_path, capsys, tiny_onnx):
    assert run_cli(eval_verification.main, [str(tiny_onnx), str(tmp_path / "missing.bin")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "missing.bin" in err and "\n" not in err
    write_bin(tmp_path / "x.bin", np.zeros((2, 3, 112, 112), np.uint8), [True], ext=".png")
    assert run_cli(eval_verification.main, [str(tmp_path / "nope"), str(tmp_path / "x.bin")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nope" in err and "\n" not in err


def test_bin_folder_without_bins_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="no .bin files"):
        eval_verification.bin_files([str(tmp_path)])
