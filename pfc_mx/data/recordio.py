"""Random access to an MXNet RecordIO face dataset, insightface layout or flat (DESIGN.md §4).

Usage::

    ds = RecordDataset("/data/ms1m")             # folder with train.rec, train.idx, property
    ds.num_images, ds.num_classes, ds.labels     # labels: int32 (num_images,)
    jpeg, label = ds.read(17)                    # encoded image bytes and its class id

Layouts. insightface: record 0 is a header (`flag >= 2`, `label = (a, b)`, no image payload);
records 1 … a−1 are images and a … b−1 identity records whose label is the image range
[start, end) of one identity. flat: record 0 is an ordinary image and every key in the
index is an image. An image's class id is its header label (or its first element when the
label is an array).

All image headers are read once on open with a vectorised scan of a memory map (no Python
loop per record), which also checks that every index offset points at a record lying inside
the .rec, that the index reaches the end of the .rec (a truncated .idx is caught) and that
every label is in [0, num_classes). Records are read with os.pread on a
descriptor opened per process, so a dataset object may be used after fork.
"""
from __future__ import annotations

import logging
import mmap
import os
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from pfc_mx.data.record_format import (check_index_covers, read_index, read_property, read_record_at,
                                       scan_headers, unpack_header)
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
    """

    def __init__(self, root_or_rec_path: "str | os.PathLike", *, strict_labels: bool = True):
        self.path, self.idx_path, self.property_path = resolve_paths(root_or_rec_path)
        if not self.path.is_file():
            raise DatasetError(f"{self.path}: no such RecordIO file")
        if not self.idx_path.is_file():
            raise DatasetError(f"{self.path}: index {self.idx_path.name} is missing beside it")
        self.file_size = self.path.stat().st_size
        if self.file_size == 0:
            raise DatasetError(f"{self.path}: empty dataset (0 bytes)")
        keys, offsets = read_index(self.idx_path)
        if keys.size == 0:
            raise DatasetError(f"{self.idx_path}: empty dataset (no records in the index)")
        self._fd: Optional[int] = None
        self._pid = -1
        prop_classes, self.image_size = read_property(self.property_path)
        self.layout, self.identity_range = "flat", (0, 0)
        if keys[0] == 0:
            self._detect_insightface(int(offsets[0]))
        if self.layout == "insightface":
            a, b = self.identity_range
            image_keys = np.arange(1, a, dtype=np.int64)
            pos = np.searchsorted(keys, image_keys)
            missing = np.flatnonzero((pos >= keys.size) | (keys[np.minimum(pos, keys.size - 1)] != image_keys))
            if missing.size:
                raise DatasetError(f"{self.idx_path}: image record {image_keys[missing[0]]} named by the header "
                                   f"(images 1..{a - 1}) is not in the index")
            self.keys, self.offsets = image_keys, offsets[pos]
        else:
            self.keys, self.offsets = keys, offsets
        if self.keys.size == 0:
            raise DatasetError(f"{self.path}: empty dataset (the header lists no image records)")
        raw = self._scan_labels()
        check_index_covers(self._handle(), keys, offsets, self.file_size, self.path, self.idx_path)
        bad = ~np.isfinite(raw) | (raw < 0)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise DatasetError(f"{self.path}: record {self.keys[k]} has label {raw[k]}, not a class id >= 0")
        self.labels = raw.astype(np.int64)
        self.num_classes = int(prop_classes if prop_classes is not None else self.labels.max() + 1)
        self.bad_labels = np.flatnonzero(self.labels >= self.num_classes)
        if self.bad_labels.size and strict_labels:
            k = int(self.bad_labels[0])
            raise DatasetError(f"{self.path}: record {self.keys[k]} has label {self.labels[k]} >= num_classes "
                               f"{self.num_classes} (from {self.property_path.name if prop_classes else 'labels'})")
        self.labels = self.labels.astype(np.int32)
        good = self.labels[self.labels < self.num_classes]
        self.class_counts = np.bincount(good, minlength=self.num_classes)
        self.empty_classes = int((self.class_counts == 0).sum())
        if self.empty_classes and prop_classes is None:
            log.warning("%s: no %s file, so num_classes = largest label + 1 = %d, and %d of those classes have no "
                        "image (labels should be 0..C-1 without gaps; write a property file or relabel)", self.path,
                        self.property_path.name, self.num_classes, self.empty_classes)
        log.debug("opened %s: %s layout, %d images, %d classes", self.path, self.layout, self.num_images,
                  self.num_classes)

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

    def _detect_insightface(self, offset0: int) -> None:
        payload = read_record_at(self._handle(), offset0, self.file_size, str(self.path))
        try:
            flag, label, rest = unpack_header(payload)
        except ValueError:
            raise DatasetError(f"{self.path}: record 0 is shorter than a record header")
        if flag >= 2 and rest[:2] != b"\xff\xd8" and rest[:4] != b"\x89PNG":  # a header, not a JPEG/PNG image
            a, b = int(label[0]), int(label[1])
            if not 1 <= a <= b:
                raise DatasetError(f"{self.path}: header record 0 has image/identity bounds ({a}, {b}); "
                                   "expected 1 <= a <= b")
            self.layout, self.identity_range = "insightface", (a, b)

    def _scan_labels(self) -> np.ndarray:
        order = np.argsort(self.offsets, kind="stable")  # sequential pages
        with open(self.path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # unmapped when the last view goes
        labels = scan_headers(np.frombuffer(mm, np.uint8), self.offsets[order], str(self.path), self.keys[order])
        out = np.empty_like(labels)
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
        """(num_identities, 2) int64 image ranges [start, end) of the identity records (insightface only)."""
        a, b = self.identity_range
        if self.layout != "insightface" or b == a:
            return np.zeros((0, 2), np.int64)
        keys, offsets = read_index(self.idx_path)
        pos = np.searchsorted(keys, np.arange(a, b))
        out = np.empty((b - a, 2), np.int64)
        for j, p in enumerate(pos):
            if p >= keys.size or keys[p] != a + j:
                raise DatasetError(f"{self.idx_path}: identity record {a + j} is not in the index")
            out[j] = unpack_header(read_record_at(self._handle(), int(offsets[p]), self.file_size,
                                                  str(self.path)))[1][:2]
        return out

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
