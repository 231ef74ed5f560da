"""Class labels of an insightface-layout rec from its identity records, without reading every image.

Usage::

    a, b = resolve_bounds(buf, keys, offsets, a, b, where)     # exact, also past 2**24 images
    ranges = read_ranges(buf, offsets, a, b, where)            # (b - a, 2) float32 as stored
    tiling = tile(ranges, a, where)                            # classes of any images; image i is record i + 1
    check_sample(buf, image_offsets, tiling, a, where)         # a sample of image headers agrees
    labels = tiling.labels()                                   # (a - 1,) int32; tiling.windows: from headers

Identity record a + k holds the image range [start, end) of class k; together the ranges
tile images 1 … a − 1. They are float32 (mx.recordio.pack stores array labels so), which is
exact below 2**24: past it (Glint360K has 17.1 M images, WebFace42M 42 M) a stored bound
may be the true one rounded by up to half a float32 step, so the few images around each such
bound get their class from their own headers (`windows`). Everything else reads O(index +
identities) bytes; `tools/rec.py validate` compares every image header with the ranges.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

from pfc_mx.data.record_format import Keys, positions, scan_headers, scan_pairs
from pfc_mx.errors import DatasetError

EXACT = 1 << 24  # float32 holds every integer below this exactly
SAMPLE_IMAGES = 512  # random image headers checked against the ranges at open
SAMPLE_IDENTITIES = 256  # identities whose first and last image headers are checked too
_IDENTITY_PAYLOAD = 32  # IRHeader (24 bytes) + two float32: an identity record has no image


def _step(value: float) -> int:
    """Spacing (in images) of float32 numbers at `value`: the integer it was rounded from lies within
    half of it; 0 when exact."""
    return 0 if abs(value) < EXACT else int(np.spacing(np.float32(abs(value))))


def _is_identity(buf: np.ndarray, keys: Keys, offsets: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Bool per candidate key: the record is an identity record (2-value label, no image); False if absent."""
    pos, present = positions(keys, candidates)
    present[present] &= offsets[pos[present]] + 12 <= buf.size
    out = np.zeros(candidates.size, bool)
    off = offsets[pos[present]]
    head = np.ascontiguousarray(buf[off[:, None] + np.arange(12)]).view("<u4")  # magic, lrec, flag
    out[present] = (head[:, 2] == 2) & ((head[:, 1] & ((1 << 29) - 1)) == _IDENTITY_PAYLOAD)
    return out


def resolve_bounds(buf: np.ndarray, keys: Keys, offsets: np.ndarray, a: float, b: float,
                   where: str) -> Tuple[int, int]:
    """Record 0's (a, b) as exact integers: past 2**24 the stored float32 may be rounded, and the
    true bound is where the records turn from images to identity records (a) and end (b)."""
    exact = []
    for name, value, before, after in (("a", a, False, True), ("b", b, True, False)):
        h = _step(value)
        if h == 0:
            exact.append(int(value))
            continue
        cand = np.arange(int(value) - h, int(value) + h + 1, dtype=np.int64)
        kind = _is_identity(buf, keys, offsets, np.concatenate(([cand[0] - 1], cand)))
        turn = np.flatnonzero((kind[:-1] == before) & (kind[1:] == after))
        if turn.size != 1:
            raise DatasetError(f"{where}: record 0's bound {name} = {value:.0f} (float32, rounded past 2**24) "
                               f"matches no single turn between image and identity records near it")
        exact.append(int(cand[turn[0]]))
    return exact[0], exact[1]


def read_ranges(buf: np.ndarray, offsets_of: np.ndarray, a: int, b: int, where: str) -> np.ndarray:
    """(b − a, 2) float32 [start, end) of identity records a … b − 1 at byte offsets `offsets_of`."""
    return scan_pairs(buf, offsets_of, where, np.arange(a, b, dtype=np.int64))


class Tiling:
    """How identity ranges tile images 1 … a − 1: `order` (class of each range, in image order) and
    `bounds` (each of those ranges' end, exact below 2**24); classes of any images without
    building the whole labels array."""

    def __init__(self, order: np.ndarray, bounds: np.ndarray, windows: np.ndarray):
        self.order, self.bounds = order, bounds
        self.windows = windows  # image indices whose class the ranges leave open (bounds past 2**24)

    def classes(self, images: np.ndarray) -> np.ndarray:
        """(len(images),) int32 classes of image indices (image i is record i + 1)."""
        return self.order[np.searchsorted(self.bounds, images + 1, side="right")].astype(np.int32)

    def labels(self) -> np.ndarray:
        """(a − 1,) int32 classes of every image."""
        return np.repeat(self.order.astype(np.int32), np.diff(np.append(1, self.bounds)))

    def edges(self) -> Tuple[np.ndarray, np.ndarray]:
        """(first, last) image index of every non-empty range."""
        starts = np.append(1, self.bounds[:-1])
        full = self.bounds > starts
        return starts[full] - 1, self.bounds[full] - 2


def tile(ranges: np.ndarray, a: int, where: str) -> Tiling:
    """The Tiling of (n, 2) float32 ranges [start, end), in any order (empty ones anywhere), over images
    1 … a − 1; DatasetError naming the first identity record (in file order) that does not fit."""
    start, end = ranges[:, 0], ranges[:, 1]
    backwards = np.flatnonzero(end < start)
    if backwards.size:
        k = int(backwards[0])
        raise DatasetError(f"{where}: identity record {a + k} has range [{start[k]:.0f}, {end[k]:.0f}), which ends "
                           "before it starts: damaged or inconsistent identity records")
    order = np.lexsort((end, start))  # float32 comparisons keep the true order (rounding is monotone)
    s, e = start[order], end[order]
    gap = np.append(s[0] != np.float32(1), s[1:] != e[:-1])
    gap |= np.append(np.zeros(len(e) - 1, bool), e[-1] != np.float32(a))
    if gap.any():
        k = int(order[np.flatnonzero(gap)[0]])
        raise DatasetError(f"{where}: identity record {a + k} has range [{start[k]:.0f}, {end[k]:.0f}), which leaves "
                           f"a gap or an overlap in the images 1..{a - 1} the ranges must cover: damaged or "
                           "inconsistent identity records")
    bounds = np.append(e[:-1].astype(np.int64), a)  # exact below 2**24 and at a
    return Tiling(order, bounds, uncertain(e[:-1], a))


def uncertain(inner: np.ndarray, a: int, block: int = 1 << 20) -> np.ndarray:
    """Image indices whose class float32 range bounds leave open: for a stored bound v past 2**24, the
    images between the smallest and the largest integer that rounds to v (ties to even: about half
    of the bounds are exact). Sorted, unique."""
    loose = inner[inner >= EXACT].astype(np.int64)
    if loose.size == 0:
        return np.zeros(0, np.int64)
    h = _step(float(loose.max())) // 2
    found = []
    for lo in range(0, loose.size, block):
        v = loose[lo:lo + block]
        cand = v[:, None] + np.arange(-h, h + 1)
        rounds = cand.astype(np.float32).astype(np.int64) == v[:, None]
        first = np.where(rounds, cand, np.iinfo(np.int64).max).min(1)
        last = np.where(rounds, cand, np.iinfo(np.int64).min).max(1)
        width = last - first  # keys first … last − 1 may lie on either side of the true bound
        keys = (first[:, None] + np.arange(2 * h)).ravel()[(np.arange(2 * h) < width[:, None]).ravel()]
        found.append(keys[(keys >= 1) & (keys < a)] - 1)
    return np.unique(np.concatenate(found))


def exact_ranges(ranges: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(n, 2) int64 ranges with every non-empty identity's bounds taken from the exact labels."""
    out = ranges.astype(np.int64)
    classes, first, count = np.unique(labels, return_index=True, return_counts=True)
    out[classes, 0] = first + 1
    out[classes, 1] = first + 1 + count
    return out


def headers_at(buf: np.ndarray, image_offsets: np.ndarray, images: np.ndarray, where: str) -> np.ndarray:
    """Header class labels (float64) of image indices `images` (any order), read in file order."""
    order = np.argsort(image_offsets[images], kind="stable")
    out = np.empty(images.size, np.float64)
    out[order] = scan_headers(buf, image_offsets[images[order]], where, images[order] + 1)
    return out


def check_sample(buf: np.ndarray, image_offsets: np.ndarray, tiling: Tiling, a: int, where: str,
                 seed: int = 0) -> None:
    """DatasetError when a sample of image headers (random images, and the first and last image of
    random identities) disagrees with the classes the identity records give them."""
    rng = np.random.default_rng(seed)
    n = a - 1
    first, last = tiling.edges()
    pick = rng.choice(first.size, min(SAMPLE_IDENTITIES, first.size), replace=False)
    images = np.unique(np.concatenate((rng.choice(n, min(SAMPLE_IMAGES, n), replace=False), first[pick], last[pick])))
    images = images[~np.isin(images, tiling.windows)]  # those take their class from their header anyway
    found = headers_at(buf, image_offsets, images, where)
    given = tiling.classes(images)
    wrong = np.flatnonzero(found != given)
    if wrong.size:
        i, k = int(images[wrong[0]]), int(given[wrong[0]])
        raise DatasetError(f"{where}: image record {i + 1} has class {found[wrong[0]]:g} in its header, but identity "
                           f"record {a + k} puts it in class {k}: the identity records disagree with the images "
                           f"({wrong.size} of {images.size} sampled); `python tools/rec.py validate` lists every "
                           "disagreement")
