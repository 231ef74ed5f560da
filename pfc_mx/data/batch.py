"""One batch of one rank: decode, replace damaged records from spares, augment (no processes, no queues).

Usage::

    used, corrupt, wrong = load_batch(dataset, indices, spares, out, key=(seed, epoch, step, rank),
                                      mirror=True, color_jitter=0.0)

The loader (pfc_mx.data.loader) calls it in its worker processes or, with num_workers=0, in
the calling process; the result depends only on its arguments, never on where it runs.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from pfc_mx.data import augment
from pfc_mx.data.checks import decode
from pfc_mx.data.recordio import RecordDataset
from pfc_mx.errors import DatasetError


def load_batch(dataset: RecordDataset, indices: np.ndarray, spares: np.ndarray, out: np.ndarray,
               key: Tuple[int, ...], mirror: bool, color_jitter: float,
               on_wrong_size: str = "resize") -> Tuple[np.ndarray, Dict[int, str], Dict[int, str]]:
    """Decode + augment images `indices` (B,) into out (B, 3, S, S) uint8.

    Returns (used (B,) image indices actually placed, after replacing damaged (or, with
    on_wrong_size "skip", wrongly sized) ones from `spares`; {damaged image index: why};
    {image index of another size or channel count: its 'WxHxC'}). key seeds the augmentation.
    """
    used = np.array(indices, np.int64)
    corrupt: Dict[int, str] = {}
    wrong: Dict[int, str] = {}
    spare_iter = iter(spares.tolist())
    missing = []
    size = out.shape[-1]
    for pos, i in enumerate(indices.tolist()):
        while True:
            img, fault, shape = decode(dataset, i, size, on_wrong_size)
            if shape:
                wrong[i] = shape
            if img is not None:
                break
            if fault:
                corrupt[i] = fault
            i = next(spare_iter, None)
            if i is None:
                break
        if img is None:
            missing.append(pos)
            continue
        used[pos] = i
        out[pos] = img.transpose(2, 0, 1)
    if missing:  # spares exhausted: repeat decoded images of this batch
        good = np.setdiff1d(np.arange(len(indices)), missing)
        if good.size == 0:
            raise DatasetError(f"{dataset.path}: no image of a batch of {len(indices)} (and {len(spares)} spares) "
                               "decodes" + (f" at {size}x{size}x3 (data.on_wrong_size: skip)" if wrong else ""))
        for n, pos in enumerate(missing):
            src = good[n % good.size]
            out[pos], used[pos] = out[src], used[src]
    params = augment.draw(np.random.default_rng(list(key)), len(indices), mirror, color_jitter)
    out[...] = augment.apply(out, params)
    return used, corrupt, wrong
