"""Write an insightface-layout rec of a given shape (images × classes) fast, for scale rehearsals.

Usage::

    summary = write_shaped("scale/ms1mv3", *SHAPES["ms1mv3"], image_bytes=3600, progress=print_fn)

Every image is the same tiny valid image (a PNG, or a JPEG padded to `image_bytes` with comment
segments, so the file has the size real 112×112 faces give it); class sizes differ by at most one and
are shuffled with `seed`. Records are built as rows of one byte matrix per block (no Python
loop per record) and the .idx text the same way, exactly as mx.recordio writes them: record 0
the header (a, b), images 1 … a − 1, identity records a … b − 1 with float32 ranges (rounded
past 2**24 images, as mx.recordio.pack rounds them).
"""
from __future__ import annotations

import os
import struct
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import cv2
import numpy as np

from pfc_mx.data.record_format import MAGIC

# (images, identities) of the published training sets
SHAPES: Dict[str, tuple] = {"ms1mv3": (5_179_510, 93_431), "glint360k": (17_091_657, 360_232),
                            "webface42m": (42_474_557, 2_059_906)}
_BLOCK = 1 << 20  # records per write


def tiny_image(total_bytes: int = 0, size: int = 8) -> bytes:
    """A valid size×size gray image: a PNG (~80 bytes), or a JPEG padded with comment segments to
    `total_bytes` when that is larger than a plain JPEG (~630 bytes)."""
    gray = np.full((size, size, 3), 128, np.uint8)
    data = cv2.imencode(".jpg", gray)[1].tobytes()
    pad = total_bytes - len(data)
    if pad <= 4:
        return cv2.imencode(".png", gray)[1].tobytes()
    chunks = []
    while pad > 4:
        n = min(pad - 4, 65533)
        chunks.append(b"\xff\xfe" + struct.pack(">H", n + 2) + b"\x00" * n)
        pad -= n + 4
    return data[:2] + b"".join(chunks) + data[2:]


def _records(keys: np.ndarray, flag: int, labels: np.ndarray, payload: bytes) -> np.ndarray:
    """(n, record bytes) uint8: RecordIO records of IRHeader(flag, label or 0, key, 0) + `payload`."""
    n, length = keys.size, 24 + len(payload)
    rows = np.zeros((n, 8 + ((length + 3) & ~3)), np.uint8)
    rows[:, 0:4] = np.frombuffer(struct.pack("<I", MAGIC), np.uint8)
    rows[:, 4:8] = np.frombuffer(struct.pack("<I", length), np.uint8)
    rows[:, 8:12] = np.frombuffer(struct.pack("<I", flag), np.uint8)
    if flag == 0:
        rows[:, 12:16] = labels.astype("<f4").view(np.uint8).reshape(n, 4)
    rows[:, 16:24] = keys.astype("<u8").view(np.uint8).reshape(n, 8)
    if flag == 2:
        rows[:, 32:40] = labels.astype("<f4").view(np.uint8).reshape(n, 8)
    else:
        rows[:, 32:32 + len(payload)] = np.frombuffer(payload, np.uint8)
    return rows


def index_text(keys: np.ndarray, offsets: np.ndarray) -> bytes:
    """'key<TAB>offset<NEWLINE>' lines of non-negative int64 arrays, as mx.recordio writes them."""
    cols = []
    for values, end in ((keys, b"\t"), (offsets, b"\n")):
        digits = np.maximum(1, np.floor(np.log10(np.maximum(values, 1))).astype(np.int64) + 1)
        width = int(digits.max())
        power = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
        mat = (values[:, None] // power % 10 + 48).astype(np.uint8)
        keep = np.arange(width) >= width - digits[:, None]
        cols.append((mat, keep))
        cols.append((np.full((values.size, 1), end[0], np.uint8), np.ones((values.size, 1), bool)))
    mat = np.concatenate([m for m, _ in cols], axis=1)
    keep = np.concatenate([k for _, k in cols], axis=1)
    return mat[keep].tobytes()


def write_shaped(out_dir: "str | os.PathLike", num_images: int, num_classes: int, image_bytes: int = 0,
                 seed: int = 0, progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """Write train.rec, train.idx and property into out_dir; return sizes and seconds.

    progress(records written, records in all) is called after every block.
    """
    if num_classes < 1 or num_images < num_classes:
        raise ValueError(f"need 1 <= classes <= images, got {num_classes} classes, {num_images} images")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    counts = np.full(num_classes, num_images // num_classes, np.int64)
    counts[:num_images % num_classes] += 1
    counts = np.random.default_rng(seed).permutation(counts)
    ends = 1 + np.cumsum(counts)
    a, b = num_images + 1, num_images + 1 + num_classes
    image = tiny_image(image_bytes)
    total = b
    with open(out / "train.rec", "wb") as rec, open(out / "train.idx", "wb") as idx:
        head = _records(np.zeros(1, np.int64), 2, np.array([[a, b]], np.float64), b"\0" * 8)
        rec.write(head.tobytes())
        idx.write(index_text(np.zeros(1, np.int64), np.zeros(1, np.int64)))
        pos = head.shape[1]
        for lo in range(1, b, _BLOCK):
            hi = min(lo + _BLOCK, b)
            parts = []
            for k0, k1, is_image in ((lo, min(hi, a), True), (max(lo, a), hi, False)):
                if k1 <= k0:
                    continue
                keys = np.arange(k0, k1, dtype=np.int64)
                if is_image:
                    rows = _records(keys, 0, np.searchsorted(ends, keys, side="right"), image)
                else:
                    c = keys - a
                    rows = _records(keys, 2, np.stack((ends[c] - counts[c], ends[c]), axis=1), b"\0" * 8)
                parts.append((keys, rows))
            for keys, rows in parts:
                offsets = pos + rows.shape[1] * np.arange(keys.size, dtype=np.int64)
                rec.write(rows.data)
                idx.write(index_text(keys, offsets))
                pos += rows.size
            if progress:
                progress(hi, total)
    (out / "property").write_text(f"{num_classes},112,112\n")
    return {"out_dir": str(out), "num_images": int(num_images), "num_classes": int(num_classes),
            "rec_bytes": int(pos), "idx_bytes": int((out / "train.idx").stat().st_size),
            "seconds": round(time.time() - t0, 2)}
