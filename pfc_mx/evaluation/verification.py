"""`.bin` face verification: flip-averaged embeddings and insightface's 10-fold accuracy.

    images, issame = load_bin("lfw.bin")                 # (2P, 3, 112, 112) uint8, (P,) bool
    emb = embed(forward, images, batch_size=64)          # (2P, D) float32, unit rows
    acc, std, threshold = ten_fold_accuracy(emb, issame)

The protocol is insightface's `verification.py` (`calculate_roc`): the distance of a pair is
the squared L2 distance of the L2-normalised embeddings (in [0, 4]; = 2 − 2·cosine), a pair is
called "same" when its distance is strictly below the threshold, the pairs are cut into ten
consecutive folds (KFold without shuffling), and for each fold the threshold of the grid
0, 0.01, …, 3.99 with the best accuracy on the other nine folds (the smallest on ties) is
applied to it. The accuracy is the mean ± std over the folds.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, Tuple

import mxnet as mx
import numpy as np
from sklearn.model_selection import KFold

log = logging.getLogger(__name__)

THRESHOLDS = np.arange(0, 4, 0.01)

ForwardFn = Callable[[mx.nd.NDArray], Any]


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of x (N, D) divided by their L2 norm (zero rows stay zero), float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def pair_distances(embeddings: np.ndarray) -> np.ndarray:
    """(P,) squared L2 distances of pairs (2i, 2i+1) of the normalised rows of embeddings (2P, D)."""
    e = l2_normalize(embeddings).astype(np.float64)
    return np.sum(np.square(e[0::2] - e[1::2]), axis=1)


def accuracies(distances: np.ndarray, issame: np.ndarray, thresholds: np.ndarray = THRESHOLDS) -> np.ndarray:
    """(T,) accuracy of `distance < threshold` as the "same" prediction, for every threshold."""
    predicted = distances[None, :] < thresholds[:, None]
    return np.mean(predicted == issame[None, :], axis=1)


def ten_fold_accuracy(embeddings: np.ndarray, issame: np.ndarray, nfolds: int = 10,
                      thresholds: np.ndarray = THRESHOLDS) -> Tuple[float, float, float]:
    """(mean accuracy, std of the fold accuracies, mean of the fold thresholds).

    embeddings: (2P, D) float, normalised here; issame: (P,) bool. nfolds=1 chooses and
    tests the threshold on all pairs (insightface's LFold convention); fewer than nfolds pairs
    use one fold per pair.
    """
    issame = np.asarray(issame, dtype=bool).reshape(-1)
    if len(embeddings) != 2 * len(issame):
        raise ValueError(f"{len(embeddings)} embeddings for {len(issame)} pairs (expected two per pair)")
    dist = pair_distances(embeddings)
    indices = np.arange(len(issame))
    if 1 < len(issame) < nfolds:
        log.warning("%d pairs are fewer than %d folds: using %d folds", len(issame), nfolds, len(issame))
        nfolds = len(issame)
    folds = KFold(n_splits=nfolds, shuffle=False).split(indices) if nfolds > 1 else [(indices, indices)]
    accs, chosen = [], []
    for train, test in folds:
        best = thresholds[int(np.argmax(accuracies(dist[train], issame[train], thresholds)))]
        accs.append(accuracies(dist[test], issame[test], np.array([best]))[0])
        chosen.append(best)
    return float(np.mean(accs)), float(np.std(accs)), float(np.mean(chosen))


def _to_numpy(y: Any) -> np.ndarray:
    return y.asnumpy() if hasattr(y, "asnumpy") else np.asarray(y)


def embed(forward_fn: ForwardFn, images: np.ndarray, batch_size: int = 64, flip: bool = True) -> np.ndarray:
    """(N, D) float32 unit-norm embeddings of images (N, 3, H, W) uint8 RGB.

    forward_fn maps a float32 NDArray batch (B, 3, H, W), raw 0..255, to (B, D) embeddings
    (NDArray or numpy). With flip, the embedding of each image and of its horizontal mirror
    are summed before normalising.
    """
    out = []
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start:start + batch_size], dtype=np.float32)
        e = _to_numpy(forward_fn(mx.nd.array(batch, dtype="float32"))).astype(np.float32)
        if flip:
            mirrored = np.ascontiguousarray(batch[:, :, :, ::-1])
            e = e + _to_numpy(forward_fn(mx.nd.array(mirrored, dtype="float32"))).astype(np.float32)
        out.append(e)
    if not out:
        return np.zeros((0, 0), np.float32)
    return l2_normalize(np.concatenate(out, axis=0))


def verify(forward_fn: ForwardFn, bin_path: "str | Path", batch_size: int = 64, flip: bool = True) -> Dict[str, Any]:
    """{name, accuracy, std, threshold, pairs} of one `.bin` set (10 folds, flip-averaged)."""
    from pfc_mx.data.verification_bin import load_bin

    images, issame = load_bin(bin_path)
    emb = embed(forward_fn, images, batch_size=batch_size, flip=flip)
    acc, std, threshold = ten_fold_accuracy(emb, issame)
    name = Path(bin_path).stem
    log.debug("%s: accuracy %.5f ± %.5f, threshold %.2f (%d pairs)", name, acc, std, threshold, len(issame))
    return {"name": name, "accuracy": acc, "std": std, "threshold": threshold, "pairs": int(len(issame))}
