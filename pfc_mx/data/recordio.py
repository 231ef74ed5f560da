"""Random access to an MXNet RecordIO face dataset, insightface layout or flat (docs/design.md, "RecordIO datasets").

Usage::

    ds = RecordDataset("/data/ms1m")             # folder with train.rec, train.idx, property
    ds.num_images, ds.num_classes, ds.labels     # labels: int32 (num_images,)
    jpeg, label = ds.read(17)                    # encoded image bytes and its class id

Layouts. insightface: record 0 is a header (`flag >= 2`, `label = (a, b)`, no image payload);
records 1 … a−1 are images and a … b−1 identity records whose label is the image range
[start, end) of one identity. flat: record 0 is an ordinary image and every key in the
index is an image. An image's class id is its header label (or its first element when the
label is an array).

Opening reads the index (in bounded memory) and, for the labels:
- insightface layout: the identity records (class k = identity record a + k), checked
  against a sample of image headers (pfc_mx.data.identities): O(index + identities) bytes;
- flat layout: one vectorised header scan of a memory map, kept in our labels cache
  (pfc_mx.data.label_cache) so the next open reads only the index.
It checks that the index reaches the end of the .rec (a truncated .idx is caught) and that
every label is in [0, num_classes). Records are read with os.pread on a descriptor opened
per process, so a dataset object may be used after fork.
"""
from __future__ import annotations

import logging
import mmap
import os
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from pfc_mx.data import identities, label_cache
from pfc_mx.data.record_format import (KeyRange, Keys, check_index_covers, positions, read_index, read_property,
                                       read_record_at, scan_headers, unpack_header)
from pfc_mx.errors import DatasetError

log = logging.getLogger(__name__)


def resolve_paths(root_or_rec_path: "str | os.PathLike") -> Tuple[Path, Path, Path]:
    """(rec, idx, property) for a dataset folder or a .rec path; the idx sits beside the rec."""
    p = Path(root_or_rec_path)
    rec = p / "train.rec" if p.is_dir() else p
    return rec, rec.with_suffix(".idx"), rec.parent / "property"


class RecordDataset:
    """An indexed face RecordIO dataset: num_images, num_classes, labels, class_counts, read(i).

    root_or_rec_path: a folder with train.rec/train.idx[/property] or a .rec with its .idx beside it.
    strict_labels: raise on a label outside [0, num_classes) (tools may pass False and inspect
    `bad_labels`, the image indices of such records).
    labels_from: "auto" (identity records in the insightface layout, else the cached header
    scan) or "headers" (scan every image header now, trusting no identity record or cache:
    tools/rec.py validate). `label_source` says which gave the labels.
    """

    def __init__(self, root_or_rec_path: "str | os.PathLike", *, strict_labels: bool = True,
                 labels_from: str = "auto"):
        if labels_from not in ("auto", "headers"):
            raise ValueError(f"labels_from must be 'auto' or 'headers', got {labels_from!r}")
        self.path, self.idx_path, self.property_path = resolve_paths(root_or_rec_path)
        if not self.path.is_file():
            raise DatasetError(f"{self.path}: no such RecordIO file")
        if not self.idx_path.is_file():
            raise DatasetError(f"{self.path}: index {self.idx_path.name} is missing beside it")
        self.file_size = self.path.stat().st_size
        if self.file_size == 0:
            raise DatasetError(f"{self.path}: empty dataset (0 bytes)")
        kept = label_cache.load_index(self.idx_path)
        if kept is None:
            digest = label_cache.index_digest()
            keys, offsets = read_index(self.idx_path, digest=digest)
            self._index_digest = digest.hexdigest()
            if keys.size:
                label_cache.store_index(self.idx_path, keys, offsets, self._index_digest)
        else:
            keys, offsets, self._index_digest = kept
        if keys.size == 0:
            raise DatasetError(f"{self.idx_path}: empty dataset (no records in the index)")
        self._fd: Optional[int] = None
        self._pid = -1
        prop_classes, self.image_size = read_property(self.property_path)
        self.layout, self.identity_range = "flat", (0, 0)
        self._identity_offsets = np.zeros(0, np.int64)
        buf = self._map()
        check_index_covers(self._handle(), keys, offsets, self.file_size, self.path, self.idx_path)
        bounds = self._header_bounds(int(offsets[0])) if keys[0] == 0 else None
        if bounds is not None:
            a, b = identities.resolve_bounds(buf, keys, offsets, *bounds, str(self.path))
            self.layout, self.identity_range = "insightface", (a, b)
            self.keys, self.offsets = self._image_records(keys, offsets, a, b)
        else:
            self.keys, self.offsets = keys, offsets
        del keys, offsets  # the index's key column is not kept in the insightface layout
        if self.keys.size == 0:
            raise DatasetError(f"{self.path}: empty dataset (the header lists no image records)")
        del buf
        labels = self._labels(labels_from)
        self.num_classes = int(prop_classes if prop_classes is not None else labels.max() + 1)
        self.bad_labels = np.flatnonzero(labels >= self.num_classes)
        if self.bad_labels.size and strict_labels:
            k = int(self.bad_labels[0])
            raise DatasetError(f"{self.path}: record {self.keys[k]} has label {labels[k]} >= num_classes "
                               f"{self.num_classes} (from {self.property_path.name if prop_classes else 'labels'})")
        self.labels = labels.astype(np.int32, copy=False)
        self.class_counts = np.zeros(self.num_classes, np.int64)
        for lo in range(0, self.labels.size, 1 << 18):  # bincount copies its input to int64: a block at a time
            part = self.labels[lo:lo + (1 << 18)]
            self.class_counts += np.bincount(part[part < self.num_classes], minlength=self.num_classes)
        self.empty_classes = int((self.class_counts == 0).sum())
        if self.empty_classes and prop_classes is None:
            log.warning("%s: no %s file, so num_classes = largest label + 1 = %d, and %d of those classes have no "
                        "image (labels should be 0..C-1 without gaps; write a property file or relabel)", self.path,
                        self.property_path.name, self.num_classes, self.empty_classes)
        log.debug("opened %s: %s layout, %d images, %d classes, labels from %s", self.path, self.layout,
                  self.num_images, self.num_classes, self.label_source)

    @property
    def num_images(self) -> int:
        return int(self.keys.size)

    def __len__(self) -> int:
        return self.num_images

    def __repr__(self) -> str:
        return (f"RecordDataset({str(self.path)!r}: {self.layout}, {self.num_images} images, "
                f"{self.num_classes} classes)")

    def _handle(self) -> int:
        """The file descriptor of this process (reopened after fork)."""
        if self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def _map(self) -> np.ndarray:
        """The .rec as a read-only uint8 array over a memory map (unmapped when the last view goes)."""
        with open(self.path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        mm.madvise(mmap.MADV_RANDOM)  # header reads are scattered: no read-ahead of image bytes
        return np.frombuffer(mm, np.uint8)

    def _header_bounds(self, offset0: int) -> Optional[Tuple[float, float]]:
        """Record 0's (a, b) when it is an insightface header, else None (a flat dataset's first image)."""
        payload = read_record_at(self._handle(), offset0, self.file_size, str(self.path))
        try:
            flag, label, rest = unpack_header(payload)
        except ValueError:
            raise DatasetError(f"{self.path}: record 0 is shorter than a record header")
        if flag < 2 or rest[:2] == b"\xff\xd8" or rest[:4] == b"\x89PNG":  # an image, not a header
            return None
        a, b = float(label[0]), float(label[1])
        if not 1 <= a <= b:
            raise DatasetError(f"{self.path}: header record 0 has image/identity bounds ({a:.0f}, {b:.0f}); "
                               "expected 1 <= a <= b")
        return a, b

    def _image_records(self, keys: Keys, offsets: np.ndarray, a: int, b: int) -> Tuple[KeyRange, np.ndarray]:
        """(keys, offsets) of images 1 … a − 1; keeps the identity records' offsets aside."""
        if keys.size >= b and keys[0] == 0 and keys[b - 1] == b - 1:  # sorted unique: keys[:b] == 0 … b − 1
            self._identity_offsets = offsets[a:b].copy()
            return KeyRange(1, a), np.ascontiguousarray(offsets[1:a])
        wanted = np.arange(1, b, dtype=np.int64)
        pos, present = positions(keys, wanted)
        missing = np.flatnonzero(~present)
        if missing.size:
            k = int(wanted[missing[0]])
            what = "image" if k < a else "identity"
            raise DatasetError(f"{self.idx_path}: {what} record {k} named by the header (images 1..{a - 1}, "
                               f"identities {a}..{b - 1}) is not in the index")
        self._identity_offsets = offsets[pos[a - 1:]]
        return KeyRange(1, a), offsets[pos[:a - 1]]

    def _labels(self, labels_from: str) -> np.ndarray:
        """Class ids (int32 or int64, >= 0) of every image; sets label_source."""
        a, b = self.identity_range
        if labels_from == "auto" and self.layout == "insightface" and b > a:
            self.label_source = "identity records"
            key = None
            if a > identities.EXACT:  # bounds may be rounded: headers decide around them; the result is kept
                key = label_cache.cache_key(self.path, self._index_digest)
                cached = label_cache.load(key, self.num_images)
                if cached is not None:
                    self.label_source = "labels cache"
                    return cached.astype(np.int32)
            tiling = self._tiling()
            identities.check_sample(self._map(), self.offsets, tiling, a, str(self.path))  # map dropped after
            labels = self._expand(tiling)
            if key is not None:
                label_cache.store(key, labels)
            return labels
        raw, key = None, None
        if labels_from == "auto":
            key = label_cache.cache_key(self.path, self._index_digest)
            raw = label_cache.load(key, self.num_images)
        self.label_source = "header scan" if raw is None else "labels cache"
        if raw is None:
            raw = self._scan_labels(self._map())
            if key is not None:
                saved = label_cache.store(key, raw)
                if saved:
                    log.info("%s: scanned %d image headers; labels cached in %s", self.path, raw.size, saved)
        bad = ~np.isfinite(raw) | (raw < 0)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise DatasetError(f"{self.path}: record {self.keys[k]} has label {float(raw[k])}, not a class id >= 0")
        return raw.astype(np.int64)

    def _window_headers(self, windows: np.ndarray, block: int = 1 << 15) -> np.ndarray:
        """Header classes of image indices `windows`, a fresh memory map per block (RSS stays bounded)."""
        out = np.empty(windows.size, np.float64)
        for lo in range(0, windows.size, block):
            out[lo:lo + block] = identities.headers_at(self._map(), self.offsets, windows[lo:lo + block],
                                                       str(self.path))
        return out

    def identity_labels(self) -> Optional[np.ndarray]:
        """The classes the identity records give every image (int32), None without identity records;
        DatasetError when they are damaged or do not tile the images. No check against the headers."""
        a, b = self.identity_range
        if self.layout != "insightface" or b == a:
            return None
        return self._expand(self._tiling())

    def _tiling(self) -> identities.Tiling:
        a, b = self.identity_range
        ranges = identities.read_ranges(self._map(), self._identity_offsets, a, b, str(self.path))
        return identities.tile(ranges, a, str(self.path))

    def _expand(self, tiling: identities.Tiling) -> np.ndarray:
        """(num_images,) int32 labels of the tiling, its windows from the images' headers."""
        labels = tiling.labels()
        labels[tiling.windows] = self._window_headers(tiling.windows)
        return labels

    def _scan_labels(self, buf: np.ndarray) -> np.ndarray:
        """(num_images,) float32 header labels of every image, read in file order."""
        order = np.argsort(self.offsets, kind="stable")  # sequential pages
        labels = scan_headers(buf, self.offsets[order], str(self.path), np.asarray(self.keys)[order])
        out = np.empty(labels.size, np.float32)
        out[order] = labels
        return out

    def read_raw(self, i: int) -> bytes:
        """The whole payload (header + image) of image i, 0 <= i < num_images."""
        return read_record_at(self._handle(), int(self.offsets[i]), self.file_size, str(self.path))

    def read(self, i: int) -> Tuple[bytes, int]:
        """(encoded image bytes, class id) of image i, 0 <= i < num_images."""
        _, _, img = unpack_header(self.read_raw(i))
        return img, int(self.labels[i])

    def identity_ranges(self) -> np.ndarray:
        """(num_identities, 2) int64 image ranges [start, end) of the identity records (insightface only).

        Exact past 2**24 images when the labels came from the identity records (or their cache: the
        bounds are where the labels change); otherwise the stored float32 values.
        """
        a, b = self.identity_range
        if self.layout != "insightface" or b == a:
            return np.zeros((0, 2), np.int64)
        pairs = identities.read_ranges(self._map(), self._identity_offsets, a, b, str(self.path))
        if pairs.max() < identities.EXACT or self.label_source == "header scan":  # else labels are the ranges
            return pairs.astype(np.int64)
        return identities.exact_ranges(pairs, self.labels)

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd, self._pid = None, -1

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fd"], state["_pid"] = None, -1
        return state

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
