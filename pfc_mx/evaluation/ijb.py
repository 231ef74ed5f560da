"""IJB-B / IJB-C 1:1 template verification (the protocol of insightface's eval_ijbc.py).

    result = evaluate_ijb(forward, "data/IJBC", out_dir="runs/ijb")   # forward: see model_loader
    result["tar"][1e-4]                                               # TAR at FAR 1e-4

Layout of `root` (docs/design.md, "IJB-B/C folders"; IJB-B the same with `ijbb`)::

    meta/ijbc_face_tid_mid.txt          image template_id media_id
    meta/ijbc_template_pair_label.txt   template_1 template_2 label(1 same / 0 different)
    meta/ijbc_name_5pts_score.txt       image x1 y1 ... x5 y5 detector_score
    loose_crop/<image>

Steps: align each image to the ArcFace template by its five points; embed it and its mirror and
sum the two (flip); keep the feature's norm as a quality weight (insightface's default; pass
image_norm=True to drop it) and multiply by the detector score (detector_score); average the
images of a media within a template, sum the media, L2-normalise: one feature per template; a
pair's score is the cosine of its two templates. TAR at FAR f is the true-accept rate of the ROC
point whose false-accept rate is nearest to f, the largest one at that FAR (insightface's table).
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from sklearn.metrics import auc, roc_curve

from pfc_mx.errors import DatasetError
from pfc_mx.evaluation.alignment import align_face

log = logging.getLogger(__name__)

FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
PAIR_CHUNK = 100_000


@dataclass(frozen=True)
class IJBMeta:
    """The protocol files of one IJB set, rows in the order of face_tid_mid."""

    target: str                 # "IJBC" or "IJBB"
    images: List[str]           # (N,) file names under loose_crop/
    templates: np.ndarray       # (N,) int64 template ids
    medias: np.ndarray          # (N,) int64 media ids
    landmarks: np.ndarray       # (N, 5, 2) float32 pixel x, y
    scores: np.ndarray          # (N,) float32 detector scores
    pairs: np.ndarray           # (P, 2) int64 template ids
    labels: np.ndarray          # (P,) int8, 1 = same subject


def _rows(path: Path, columns: int) -> List[List[str]]:
    """Whitespace-separated rows of a meta file, each with exactly `columns` fields."""
    if not path.is_file():
        raise DatasetError(f"{path}: IJB meta file not found")
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != columns:
                raise DatasetError(f"{path}:{number}: expected {columns} fields, got {len(fields)}")
            rows.append(fields)
    if not rows:
        raise DatasetError(f"{path}: empty IJB meta file")
    return rows


def _numbers(path: Path, rows: List[List[str]], dtype: Any) -> np.ndarray:
    try:
        return np.array(rows, dtype=dtype)
    except ValueError:
        raise DatasetError(f"{path}: a field that should be a number is not") from None


def find_target(root: "str | Path") -> str:
    """'IJBC' or 'IJBB' from the meta/*_face_tid_mid.txt present under root."""
    found = sorted(p.name.split("_")[0].upper() for p in Path(root, "meta").glob("*_face_tid_mid.txt"))
    if len(found) != 1:
        raise DatasetError(f"{Path(root, 'meta')}: expected one *_face_tid_mid.txt, found {found or 'none'}; "
                           f"pass the target (IJBB or IJBC)")
    return found[0]


def read_meta(root: "str | Path", target: Optional[str] = None) -> IJBMeta:
    """Read and cross-check the three meta files of root; DatasetError names the file and line."""
    root = Path(root)
    target = (target or find_target(root)).upper()
    stem = root / "meta" / target.lower()
    tid_path, pair_path, pts_path = (Path(f"{stem}_face_tid_mid.txt"), Path(f"{stem}_template_pair_label.txt"),
                                     Path(f"{stem}_name_5pts_score.txt"))
    face_rows = _rows(tid_path, 3)
    pair_rows = _rows(pair_path, 3)
    pts_rows = _rows(pts_path, 12)
    ids = _numbers(tid_path, [r[1:] for r in face_rows], np.int64)
    pairs = _numbers(pair_path, pair_rows, np.int64)
    points = _numbers(pts_path, [r[1:] for r in pts_rows], np.float32)
    row_of = {r[0]: i for i, r in enumerate(pts_rows)}
    images = [r[0] for r in face_rows]
    missing = [name for name in images if name not in row_of]
    if missing:
        raise DatasetError(f"{pts_path}: no landmarks for {len(missing)} images of {tid_path.name}, e.g. {missing[0]}")
    order = np.array([row_of[name] for name in images])
    unknown = np.setdiff1d(pairs[:, :2], ids[:, 0])
    if len(unknown):
        raise DatasetError(f"{pair_path}: {len(unknown)} template ids not in {tid_path.name}, e.g. {unknown[0]}")
    if not np.isin(pairs[:, 2], (0, 1)).all():
        raise DatasetError(f"{pair_path}: labels must be 0 or 1")
    return IJBMeta(target, images, ids[:, 0], ids[:, 1], points[order, :10].reshape(-1, 5, 2),
                   points[order, 10], pairs[:, :2], pairs[:, 2].astype(np.int8))


def load_aligned(path: Path, landmarks: np.ndarray) -> np.ndarray:
    """(3, 112, 112) uint8 RGB face of the image file aligned by its landmarks (5, 2)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"{path}: missing or unreadable image")
    return align_face(image, landmarks)[:, :, ::-1].transpose(2, 0, 1)


def image_features(forward_fn: Callable[[np.ndarray], Any], root: "str | Path", meta: IJBMeta,
                   batch_size: int = 128, flip: bool = True, workers: int = 4, progress: bool = True) -> np.ndarray:
    """(N, D) float32 features of meta's images (embedding + mirrored embedding with flip), not normalised.

    Images are read and aligned by `workers` threads while the model runs on the previous batch.
    """
    from tqdm import tqdm

    folder = Path(root) / "loose_crop"
    n = len(meta.images)
    starts = list(range(0, n, batch_size))
    out: List[np.ndarray] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, \
            tqdm(total=n, unit="img", desc=f"{meta.target} features", disable=not progress) as bar:
        def submit(start: int) -> List[Any]:
            return [pool.submit(load_aligned, folder / meta.images[i], meta.landmarks[i])
                    for i in range(start, min(start + batch_size, n))]
        pending = submit(starts[0]) if starts else []
        for k in range(len(starts)):
            batch = np.stack([f.result() for f in pending]).astype(np.float32)
            pending = submit(starts[k + 1]) if k + 1 < len(starts) else []
            feats = np.asarray(forward_fn(batch), dtype=np.float32)
            if flip:
                feats = feats + np.asarray(forward_fn(np.ascontiguousarray(batch[:, :, :, ::-1])), dtype=np.float32)
            out.append(feats)
            bar.update(len(batch))
    return np.concatenate(out, axis=0)


def _group_sums(x: np.ndarray, keys: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sorted unique keys, per-key sums of rows of x, per-key counts); keys (N,) int."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    return sorted_keys[starts], np.add.reduceat(x[order], starts, axis=0), np.diff(np.r_[starts, len(keys)])


def template_features(feats: np.ndarray, templates: np.ndarray, medias: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(sorted template ids (T,), unit features (T, D) float32): mean per media within a template,
    summed over the template's media, L2-normalised."""
    feats = np.asarray(feats, dtype=np.float64)
    template_ids, template_index = np.unique(templates, return_inverse=True)
    media_key = np.unique(np.stack([template_index, medias], axis=1), axis=0, return_inverse=True)[1].reshape(-1)
    keys, sums, counts = _group_sums(feats, media_key)
    media_template = np.zeros(len(keys), np.int64)
    media_template[media_key] = template_index
    _, template_sums, _ = _group_sums(sums / counts[:, None], media_template)
    norms = np.maximum(np.linalg.norm(template_sums, axis=1, keepdims=True), 1e-12)
    return template_ids, (template_sums / norms).astype(np.float32)


def pair_scores(template_ids: np.ndarray, template_feats: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """(P,) float32 cosine scores of template pairs (P, 2) (ids present in template_ids, sorted)."""
    index = np.searchsorted(template_ids, pairs)
    scores = np.empty(len(pairs), np.float32)
    for s in range(0, len(pairs), PAIR_CHUNK):
        a, b = index[s:s + PAIR_CHUNK, 0], index[s:s + PAIR_CHUNK, 1]
        scores[s:s + PAIR_CHUNK] = np.sum(template_feats[a] * template_feats[b], axis=1)
    return scores


def tar_at_far(labels: np.ndarray, scores: np.ndarray, fars: Sequence[float] = FARS) -> Dict[float, float]:
    """{far: TAR} on the full ROC: the point whose FAR is nearest to far, the largest TAR there."""
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    fpr, tpr = fpr[::-1], tpr[::-1]          # at equal distance the first = the largest TAR
    return {far: float(tpr[int(np.argmin(np.abs(fpr - far)))]) for far in fars}


def plot_roc(labels: np.ndarray, scores: np.ndarray, path: "str | Path", title: str) -> Path:
    """Write the ROC (log FAR axis 1e-6 … 1e-1) as a PNG; returns path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpr, tpr, _ = roc_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot(np.maximum(fpr, 1e-7), tpr, lw=1.2, label=f"AUC {100 * auc(fpr, tpr):.2f} %")
    ax.set(xscale="log", xlim=(1e-6, 1e-1), ylim=(0.0, 1.0), xlabel="False accept rate",
           ylabel="True accept rate", title=title)
    ax.grid(linestyle="--", linewidth=0.5)
    ax.legend(loc="lower right")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def evaluate_ijb(forward_fn: Callable[[np.ndarray], Any], root: "str | Path", target: Optional[str] = None,
                 batch_size: int = 128, flip: bool = True, detector_score: bool = True, image_norm: bool = False,
                 out_dir: "str | Path | None" = None, workers: int = 4, progress: bool = True) -> Dict[str, Any]:
    """Run the 1:1 protocol; returns {target, tar {far: TAR}, auc, images, templates, pairs, scores,
    roc_png, scores_npy}. With out_dir, writes <target>_scores.npy and <target>_roc.png there."""
    meta = read_meta(root, target)
    feats = image_features(forward_fn, root, meta, batch_size=batch_size, flip=flip, workers=workers,
                           progress=progress)
    if image_norm:
        feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    if detector_score:
        feats = feats * meta.scores[:, None]
    template_ids, template_feats = template_features(feats, meta.templates, meta.medias)
    scores = pair_scores(template_ids, template_feats, meta.pairs)
    fpr, tpr, _ = roc_curve(meta.labels, scores)
    result: Dict[str, Any] = {"target": meta.target, "tar": tar_at_far(meta.labels, scores),
                              "auc": float(auc(fpr, tpr)), "images": len(meta.images),
                              "templates": len(template_ids), "pairs": len(scores), "scores": scores}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / f"{meta.target.lower()}_scores.npy", scores)
        result["scores_npy"] = str(out / f"{meta.target.lower()}_scores.npy")
        result["roc_png"] = str(plot_roc(meta.labels, scores, out / f"{meta.target.lower()}_roc.png",
                                         f"ROC on {meta.target}"))
    log.debug("%s: %s", meta.target, ", ".join(f"TAR@FAR={f:g} {100 * t:.2f}" for f, t in result["tar"].items()))
    return result
