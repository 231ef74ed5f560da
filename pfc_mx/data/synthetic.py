"""A synthetic face-identity dataset in the insightface layout, with held-out verification pairs.

Usage::

    summary = generate("data/synth", num_identities=300, images_per_identity=24,
                       holdout_identities=100, num_pairs=600, label_flip=0.1, seed=0)
    # data/synth/train.rec, train.idx, property, synthetic_val.bin

Training classes 0 … C−1 are drawn by faces.py; the `.bin` pairs come from
`holdout_identities` further identities that never appear in training (half same-identity
pairs, half different, in a seeded random order). Noise for robustness studies:

- label_flip: that fraction of training images shows a uniformly drawn other class's
  identity under its own class label (a photo filed under the wrong person: header and
  identity record agree, the face does not);
- duplicate_fraction: that fraction of the classes are fresh photos of another class's
  identity, so one person appears under two class ids (inter-class conflict).

long_tail draws per-class image counts from a Pareto law with the same mean (at least 2).
Everything depends only on `seed`, not on `workers`.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from pfc_mx.data import faces
from pfc_mx.data.verification_bin import write_bin
from pfc_mx.parallel import parallel_map
from pfc_mx.data.writer import InsightfaceWriter

log = logging.getLogger(__name__)

_IDENTITY, _TRAIN, _PAIR, _PLAN = 0, 1, 2, 3  # rng stream tags


def class_counts(num_classes: int, images_per_identity: int, long_tail: bool, seed: int) -> np.ndarray:
    """(num_classes,) images per class: constant, or Pareto-distributed with about the same mean."""
    if not long_tail:
        return np.full(num_classes, images_per_identity, np.int64)
    rng = np.random.default_rng([seed, _PLAN, 0])
    w = rng.pareto(1.5, num_classes) + 0.2
    return np.maximum(2, np.rint(w / w.mean() * images_per_identity)).astype(np.int64)


def _render_job(job: Tuple[int, int, Tuple[int, ...]]) -> bytes:
    """JPEG bytes of one photo: (seed, identity source id, rng tag)."""
    seed, source, tag = job
    ident = faces.identity(np.random.default_rng([seed, _IDENTITY, source]))
    rng = np.random.default_rng([seed, *tag])
    img = faces.render(ident, rng)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(85, 96))])
    assert ok
    return buf.tobytes()


def _render_all(jobs: List[Tuple], workers: int, desc: str, progress: bool) -> Iterable[bytes]:
    bar = tqdm(total=len(jobs), desc=desc, unit="img", disable=None if progress else True, leave=False)
    workers = workers if len(jobs) >= 64 else 1  # a few images: not worth forking
    with parallel_map(_render_job, jobs, workers, chunksize=32, initializer=cv2.setNumThreads, initargs=(1,)) as outs:
        for out in outs:
            yield out
            bar.update()
    bar.close()


def generate(out_dir: "str | os.PathLike", num_identities: int, images_per_identity: int, long_tail: bool = False,
             label_flip: float = 0.0, duplicate_fraction: float = 0.0, holdout_identities: Optional[int] = None,
             num_pairs: Optional[int] = None, bin_name: str = "synthetic_val", seed: int = 0,
             workers: Optional[int] = None, progress: bool = True) -> Dict[str, Any]:
    """Write train.rec/train.idx/property and `<bin_name>.bin` into out_dir; return a summary dict.

    holdout_identities defaults to max(2, num_identities // 4), num_pairs to
    min(600, 4 · holdout_identities) (even); workers to the CPU count (at most 8).
    """
    t0 = time.time()
    if num_identities < 1 or images_per_identity < 1:
        raise ValueError("need at least one identity and one image per identity")
    if not (0 <= label_flip <= 1 and 0 <= duplicate_fraction < 1):
        raise ValueError("label_flip must be in [0, 1] and duplicate_fraction in [0, 1)")
    holdout = max(2, num_identities // 4) if holdout_identities is None else int(holdout_identities)
    pairs = min(600, 4 * holdout) if num_pairs is None else int(num_pairs)
    if holdout < 2 or pairs < 2:
        raise ValueError("verification pairs need >= 2 held-out identities and >= 2 pairs")
    pairs -= pairs % 2
    workers = min(8, os.cpu_count() or 1) if workers is None else int(workers)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = np.random.default_rng([seed, _PLAN, 1])

    # who is who: class c shows identity source[c]; duplicated classes borrow another class's identity
    source = np.arange(num_identities)
    num_dup = int(round(duplicate_fraction * num_identities)) if num_identities > 1 else 0
    dup = np.sort(plan.choice(num_identities, num_dup, replace=False)) if num_dup else np.zeros(0, np.int64)
    originals = np.setdiff1d(source, dup)
    if num_dup:
        source[dup] = plan.choice(originals, num_dup)
    counts = class_counts(num_identities, images_per_identity, long_tail, seed)
    identity = np.repeat(np.arange(num_identities), counts)  # per image, in write order
    shown = identity.copy()  # whose face each image shows
    num_flip = int(round(label_flip * len(shown))) if num_identities > 1 else 0
    flipped = plan.choice(len(shown), num_flip, replace=False) if num_flip else np.zeros(0, np.int64)
    shown[flipped] = (shown[flipped] + plan.integers(1, num_identities, num_flip)) % num_identities

    within = np.arange(len(identity)) - np.repeat(np.cumsum(counts) - counts, counts)
    jobs = [(seed, int(source[s]), (_TRAIN, int(c), int(j))) for s, c, j in zip(shown, identity, within)]
    with InsightfaceWriter(out, num_identities) as writer:
        for n, jpeg in enumerate(_render_all(jobs, workers, "train images", progress)):
            writer.add(jpeg, int(identity[n]))

    # verification pairs among held-out identities (sources num_identities … + holdout − 1)
    same = np.zeros(pairs, bool)
    same[: pairs // 2] = True
    same = same[plan.permutation(pairs)]
    first = plan.integers(0, holdout, pairs)
    second = np.where(same, first, (first + plan.integers(1, holdout, pairs)) % holdout)
    pair_jobs = []
    for i in range(pairs):
        for side, who in enumerate((first[i], second[i])):
            pair_jobs.append((seed, num_identities + int(who), (_PAIR, i, side)))
    bins = list(_render_all(pair_jobs, workers, "pair images", progress))
    bin_path = write_bin(out / f"{bin_name}.bin", bins, same)
    summary = {"out_dir": str(out), "rec": str(out / "train.rec"), "bin": str(bin_path),
               "num_classes": int(num_identities), "num_images": int(len(identity)),
               "distinct_identities": int(len(np.unique(source))), "duplicated_classes": int(num_dup),
               "flipped_labels": int(num_flip), "images_per_class_min": int(counts.min()),
               "images_per_class_max": int(counts.max()), "holdout_identities": int(holdout),
               "num_pairs": int(pairs), "seed": int(seed), "seconds": round(time.time() - t0, 2)}
    log.info("synthetic dataset %s: %d classes, %d images, %d pairs in %.1f s", out, num_identities, len(identity),
             pairs, summary["seconds"])
    return summary
