"""IJB-B/C 1:1 protocol on a miniature IJB-format folder with known ground truth."""
from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pfc_mx.errors import DatasetError
from pfc_mx.evaluation.alignment import ARCFACE_TEMPLATE, align_face, similarity_transform
from pfc_mx.evaluation.ijb import (evaluate_ijb, image_features, pair_scores, read_meta, tar_at_far,
                                   template_features)
from pfc_mx.cli import eval_ijb, run_cli

SUBJECTS, TEMPLATES_PER_SUBJECT, MEDIA_SIZES, MISLABELLED = 6, 3, (1, 2), 2


def make_pooling_onnx(path: Path) -> Path:
    """A stand-in embedding network as ONNX: raw RGB (N, 3, 112, 112) -> Sub/Mul -> 14×14 mean -> (N, 192)."""
    nodes = [helper.make_node("Sub", ["data", "mean"], ["centred"], name="Sub_input_mean"),
             helper.make_node("Mul", ["centred", "scale"], ["scaled"], name="Mul_input_scale"),
             helper.make_node("AveragePool", ["scaled"], ["pooled"], kernel_shape=[14, 14], strides=[14, 14]),
             helper.make_node("Flatten", ["pooled"], ["embedding"], axis=1)]
    graph = helper.make_graph(
        nodes, "pool", [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 192])],
        initializer=[numpy_helper.from_array(np.array([127.5], np.float32), "mean"),
                     numpy_helper.from_array(np.array([0.0078125], np.float32), "scale")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def pooling_features(x):
    """NumPy twin of make_pooling_onnx: (B, 3, 112, 112) raw RGB -> (B, 192)."""
    x = (np.asarray(x, np.float32) - 127.5) * 0.0078125
    return x.reshape(len(x), 3, 8, 14, 8, 14).mean(axis=(3, 5)).reshape(len(x), -1)


def make_mini_ijb(root: Path, seed: int = 0) -> dict:
    """IJB-C layout: each subject is a random 8×8 colour-block face, placed in every loose crop by a
    random similarity whose image of the ArcFace template gives the five landmarks. Templates of
    the same subject should match, others not; MISLABELLED different-subject pairs are labelled 1."""
    rng = np.random.RandomState(seed)
    (root / "meta").mkdir(parents=True)
    (root / "loose_crop").mkdir()
    faces = [np.kron(rng.randint(30, 226, (8, 8, 3)), np.ones((14, 14, 1))).astype(np.uint8) for _ in range(SUBJECTS)]
    tid_lines, pts_lines, subject_of = [], [], {}
    image, media = 0, 500
    for s, t in itertools.product(range(SUBJECTS), range(TEMPLATES_PER_SUBJECT)):
        tid = 1000 + 7 * len(subject_of)
        subject_of[tid] = s
        for size in MEDIA_SIZES:
            media += 3
            for _ in range(size):
                image += 1
                a, scale = rng.uniform(-0.3, 0.3), rng.uniform(0.9, 1.2)
                rot = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
                shift = np.array([100.0, 100.0]) - rot @ [56.0, 56.0] + rng.uniform(-8, 8, 2)
                crop = cv2.warpAffine(faces[s][:, :, ::-1], np.hstack([rot, shift[:, None]]), (200, 200),
                                      borderValue=(127, 127, 127))
                name = f"{image}.png"
                cv2.imwrite(str(root / "loose_crop" / name), crop)
                marks = ARCFACE_TEMPLATE @ rot.T + shift
                fields = [name] + [f"{v:.4f}" for v in marks.reshape(-1)] + [f"{rng.uniform(0.5, 1):.3f}"]
                pts_lines.append(" ".join(fields))
                tid_lines.append(f"{name} {tid} {media}")
    rng.shuffle(pts_lines)                                   # the files are joined by image name, not by row
    pairs = list(itertools.combinations(sorted(subject_of), 2))
    same = np.array([subject_of[a] == subject_of[b] for a, b in pairs])
    labels = same.astype(int)
    labels[rng.choice(np.flatnonzero(~same), MISLABELLED, replace=False)] = 1
    (root / "meta" / "ijbc_face_tid_mid.txt").write_text("\n".join(tid_lines) + "\n")
    (root / "meta" / "ijbc_name_5pts_score.txt").write_text("\n".join(pts_lines) + "\n")
    (root / "meta" / "ijbc_template_pair_label.txt").write_text(
        "".join(f"{a} {b} {y}\n" for (a, b), y in zip(pairs, labels)))
    return {"same": same, "labels": labels, "pairs": np.array(pairs)}


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("ijb") / "IJBC"
    return root, make_mini_ijb(root)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    return make_pooling_onnx(tmp_path_factory.mktemp("onnx") / "pool.onnx")


# ---- independent NumPy references ------------------------------------------------------------

def reference_scores(root: Path, flip=True, detector_score=True):
    """The protocol with loops, cv2.estimateAffinePartial2D for alignment, and pooling_features."""
    rows = [l.split() for l in (root / "meta" / "ijbc_face_tid_mid.txt").read_text().splitlines()]
    pts = {l.split()[0]: np.array(l.split()[1:], float) for l in
           (root / "meta" / "ijbc_name_5pts_score.txt").read_text().splitlines()}
    feats = []
    for name, _, _ in rows:
        matrix = cv2.estimateAffinePartial2D(pts[name][:10].reshape(5, 2), ARCFACE_TEMPLATE, method=cv2.LMEDS)[0]
        face = cv2.warpAffine(cv2.imread(str(root / "loose_crop" / name)), matrix, (112, 112))
        x = face[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32)
        f = pooling_features(x)[0] + (pooling_features(x[..., ::-1])[0] if flip else 0)
        feats.append(f * (pts[name][10] if detector_score else 1.0))
    templates = {}
    for (name, tid, mid), f in zip(rows, feats):
        templates.setdefault(int(tid), {}).setdefault(int(mid), []).append(f)
    unit = {}
    for tid, medias in templates.items():
        v = sum(np.mean(fs, axis=0) for fs in medias.values())
        unit[tid] = v / np.linalg.norm(v)
    pairs = np.loadtxt(root / "meta" / "ijbc_template_pair_label.txt", dtype=int)
    return np.array([unit[a] @ unit[b] for a, b, _ in pairs]), pairs[:, 2]


def reference_tar(labels, scores, far):
    """Brute-force ROC over every threshold; the points nearest to far, the largest TAR among them."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    points = [(np.mean(neg >= t), np.mean(pos >= t)) for t in np.r_[np.inf, np.unique(scores)]]
    best = min(abs(f - far) for f, _ in points)
    return max(t for f, t in points if abs(f - far) == best)


# ---- tests -----------------------------------------------------------------------------------

def test_similarity_transform_recovers_a_known_similarity():
    rng = np.random.RandomState(0)
    a, s, t = 0.7, 1.7, np.array([12.0, -5.0])
    rot = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    src = rng.uniform(0, 100, (5, 2))
    np.testing.assert_allclose(similarity_transform(src, src @ rot.T + t), np.hstack([rot, t[:, None]]), atol=1e-9)


def test_similarity_transform_is_the_least_squares_fit_on_noisy_points():
    rng = np.random.RandomState(1)
    src = rng.uniform(0, 100, (5, 2))
    dst = src * 0.8 + rng.randn(5, 2)
    m = similarity_transform(src, dst)
    residual = np.sum((src @ m[:, :2].T + m[:, 2] - dst) ** 2)
    cv_m = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)[0]
    for _ in range(20):                                     # no nearby similarity fits better
        d = rng.randn(4) * 1e-3
        a, b = m[0, 0] + d[0], m[1, 0] + d[1]
        pert = np.array([[a, -b, m[0, 2] + d[2]], [b, a, m[1, 2] + d[3]]])
        assert np.sum((src @ pert[:, :2].T + pert[:, 2] - dst) ** 2) >= residual
    assert np.sum((src @ cv_m[:, :2].T + cv_m[:, 2] - dst) ** 2) >= residual - 1e-9


def test_align_face_undoes_the_placement_of_a_face():
    rng = np.random.RandomState(2)
    face = np.kron(rng.randint(0, 256, (8, 8, 3)), np.ones((14, 14, 1))).astype(np.uint8)
    m = np.array([[0.9, -0.3, 60.0], [0.3, 0.9, 40.0]])
    crop = cv2.warpAffine(face, m, (220, 220))
    landmarks = ARCFACE_TEMPLATE @ m[:, :2].T + m[:, 2]
    inside = (np.arange(112) % 14 >= 3) & (np.arange(112) % 14 <= 10)      # away from block edges
    inner = np.ix_(inside, inside)
    aligned = align_face(crop, landmarks)
    assert aligned.shape == (112, 112, 3)
    assert np.abs(aligned.astype(int) - face)[inner].max() <= 1
    shifted = align_face(crop, landmarks + 3)              # three pixels off: visibly wrong
    assert np.abs(shifted.astype(int) - face)[inner].mean() > 5


def test_template_pooling_averages_media_then_sums_them():
    rng = np.random.RandomState(3)
    templates = np.array([9, 9, 9, 4, 4, 7])
    medias = np.array([1, 1, 2, 1, 5, 1])                  # media 1 appears in three templates
    feats = rng.randn(6, 4)
    ids, unit = template_features(feats, templates, medias)
    want = {9: (feats[0] + feats[1]) / 2 + feats[2], 4: feats[3] + feats[4], 7: feats[5]}
    assert ids.tolist() == [4, 7, 9]
    for i, tid in enumerate(ids):
        np.testing.assert_allclose(unit[i], want[tid] / np.linalg.norm(want[tid]), rtol=1e-5, atol=1e-6)
    scores = pair_scores(ids, unit, np.array([[9, 4], [7, 7]]))
    np.testing.assert_allclose(scores, [unit[2] @ unit[0], 1.0], rtol=1e-5)


def test_tar_at_far_matches_brute_force_roc_with_ties():
    rng = np.random.RandomState(4)
    labels = (rng.rand(3000) < 0.2).astype(int)
    scores = np.round(rng.randn(3000) + 2.0 * labels, 1)   # many ties
    fars = (1e-4, 1e-3, 3e-3, 1e-2, 0.05, 1e-1)
    got = tar_at_far(labels, scores, fars)
    for far in fars:
        assert got[far] == pytest.approx(reference_tar(labels, scores, far), abs=1e-12)


def test_mini_ijb_tar_matches_independent_numpy_protocol(mini, tmp_path):
    root, truth = mini
    result = evaluate_ijb(pooling_features, root, out_dir=tmp_path, batch_size=16, progress=False)
    ref_scores, labels = reference_scores(root)
    np.testing.assert_allclose(result["scores"], ref_scores, atol=2e-3)
    # ground truth: same-subject templates agree, different subjects do not
    assert result["scores"][truth["same"]].min() > 0.9
    assert result["scores"][~truth["same"]].max() < 0.6
    for far, tar in result["tar"].items():
        assert tar == reference_tar(labels, result["scores"], far)
        assert tar == pytest.approx(reference_tar(labels, ref_scores, far))
    positives = int(truth["labels"].sum())
    assert result["tar"][1e-6] == (positives - MISLABELLED) / positives      # the mislabelled pairs fail
    assert result["tar"][1e-1] >= result["tar"][1e-6]
    assert (result["images"], result["templates"], result["pairs"]) == (54, 18, 153)
    assert Path(result["roc_png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_detector_score_and_flip_options_follow_reference(mini):
    root, _ = mini
    result = evaluate_ijb(pooling_features, root, flip=False, detector_score=False, progress=False)
    ref_scores, _ = reference_scores(root, flip=False, detector_score=False)
    np.testing.assert_allclose(result["scores"], ref_scores, atol=2e-3)


def test_features_are_batch_size_independent(mini):
    root, _ = mini
    meta = read_meta(root)
    a = image_features(pooling_features, root, meta, batch_size=5, progress=False)
    b = image_features(pooling_features, root, meta, batch_size=64, workers=1, progress=False)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_eval_ijb_tool_with_onnx_model_writes_table_plot_and_json(mini, tiny_onnx, tmp_path, capsys):
    root, _ = mini
    out = tmp_path / "out"
    assert run_cli(eval_ijb.main, [str(tiny_onnx), str(root), "--out", str(out), "--quiet", "--batch-size", "7"]) == 0
    printed = capsys.readouterr().out
    assert "IJBC: 54 images, 18 templates, 153 pairs" in printed and "TAR" in printed
    saved = json.loads((out / "ijbc_tar.json").read_text())
    want = evaluate_ijb(pooling_features, root, progress=False)["tar"]
    assert saved["tar"] == pytest.approx({f"{far:g}": tar for far, tar in want.items()})
    assert (out / "ijbc_roc.png").stat().st_size > 1000 and (out / "ijbc_scores.npy").is_file()


@pytest.mark.parametrize("broken, message", [
    ("meta/ijbc_template_pair_label.txt", "ijbc_template_pair_label.txt: IJB meta file not found"),
    ("meta/ijbc_name_5pts_score.txt", "ijbc_name_5pts_score.txt: IJB meta file not found"),
    ("loose_crop/7.png", "7.png: missing or unreadable image"),
])
def test_missing_meta_or_unreadable_image_is_one_line_dataset_error(mini, tmp_path, broken, message):
    root = tmp_path / "IJBC"
    shutil.copytree(mini[0], root)
    path = root / broken
    if broken.startswith("meta"):
        path.unlink()
    else:
        path.write_bytes(b"not an image")
    with pytest.raises(DatasetError) as e:
        evaluate_ijb(pooling_features, root, progress=False)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_malformed_meta_line_names_file_and_line(mini, tmp_path):
    root = tmp_path / "IJBC"
    shutil.copytree(mini[0], root)
    with open(root / "meta" / "ijbc_template_pair_label.txt", "a") as f:
        f.write("1000 1007\n")
    with pytest.raises(DatasetError, match=r"ijbc_template_pair_label.txt:154: expected 3 fields"):
        read_meta(root)


def test_eval_ijb_tool_exits_2_on_wrong_model_or_folder(mini, tiny_onnx, tmp_path, capsys):
    root, _ = mini
    assert run_cli(eval_ijb.main, [str(tmp_path / "no_model.onnx"), str(root), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no_model.onnx" in err and "\n" not in err
    assert run_cli(eval_ijb.main, [str(tiny_onnx), str(tmp_path / "empty"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "face_tid_mid" in err and "\n" not in err
