"""Writers of face RecordIO datasets with MXNet's own mx.recordio (docs/design.md, "RecordIO datasets").

Usage::

    with InsightfaceWriter(out_dir, num_classes=C) as w:    # train.rec, train.idx, property
        for identity, label, jpeg in items:                  # grouped by identity
            w.add(jpeg, label, identity)

    with FlatWriter(out_dir / "flat.rec") as w:             # every key an image (ImageRecordIter)
        w.add(jpeg, label)

The insightface header (record 0) is written first with a placeholder and patched in
place on close, when the image and identity counts are known; its size never changes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Tuple

import mxnet as mx
import numpy as np

from pfc_mx.errors import DatasetError

_HEADER_OFFSET = 8  # the IRHeader of record 0 follows its 8-byte RecordIO chunk header


def _open(rec: Path) -> mx.recordio.MXIndexedRecordIO:
    rec.parent.mkdir(parents=True, exist_ok=True)
    try:
        return mx.recordio.MXIndexedRecordIO(str(rec.with_suffix(".idx")), str(rec), "w")
    except Exception as e:  # MXNetError or OSError from an unwritable folder
        raise DatasetError(f"{rec}: cannot write ({str(e).splitlines()[0]})")


class FlatWriter:
    """Images at keys 0 … n−1, header flag 0 and a float label."""

    def __init__(self, rec_path: "str | os.PathLike"):
        self.path = Path(rec_path)
        self._rec = _open(self.path)
        self.count = 0

    def add(self, image: bytes, label: float) -> None:
        self._rec.write_idx(self.count, mx.recordio.pack(mx.recordio.IRHeader(0, float(label), self.count, 0),
                                                         image))
        self.count += 1

    def close(self) -> None:
        self._rec.close()

    def __enter__(self) -> "FlatWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class InsightfaceWriter:
    """train.rec/train.idx/property in the insightface layout.

    Images must arrive grouped by `identity` (0 … num_classes−1, each group contiguous); the
    image's header `label` may differ from its identity (label noise). Identity record of
    identity c is key a + c with label [start, end) (empty range for an identity with no image).
    """

    def __init__(self, out_dir: "str | os.PathLike", num_classes: int, image_size: Tuple[int, int] = (112, 112),
                 prefix: str = "train"):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / f"{prefix}.rec"
        self.num_classes = int(num_classes)
        self.image_size = image_size
        self._rec = _open(self.path)
        self._rec.write_idx(0, self._header(0, 0))
        self.count = 0
        self._ranges = np.zeros((self.num_classes, 2), np.int64)
        self._seen: List[bool] = [False] * self.num_classes
        self._current: Optional[int] = None

    @staticmethod
    def _header(a: int, b: int) -> bytes:
        return mx.recordio.pack(mx.recordio.IRHeader(0, [float(a), float(b)], 0, 0), b"")

    def add(self, image: bytes, label: int, identity: Optional[int] = None) -> None:
        """Append one image; `identity` defaults to `label`."""
        identity = int(label if identity is None else identity)
        if not 0 <= identity < self.num_classes:
            raise ValueError(f"identity {identity} outside [0, {self.num_classes})")
        key = self.count + 1
        if identity != self._current:
            if self._seen[identity]:
                raise ValueError(f"images of identity {identity} are not contiguous (image record {key})")
            self._seen[identity] = True
            self._current = identity
            self._ranges[identity] = key
        self._ranges[identity, 1] = key + 1
        self._rec.write_idx(key, mx.recordio.pack(mx.recordio.IRHeader(0, float(label), key, 0), image))
        self.count += 1

    def close(self) -> None:
        """Write identity records, patch the header and write `property`."""
        if self._rec is None:
            return
        a = self.count + 1
        start = 1
        for c in range(self.num_classes):  # empty identities get an empty range where they would be
            if self._seen[c]:
                start = int(self._ranges[c, 1])
            else:
                self._ranges[c] = start
            self._rec.write_idx(a + c, mx.recordio.pack(
                mx.recordio.IRHeader(0, [float(v) for v in self._ranges[c]], a + c, 0), b""))
        self._rec.close()
        self._rec = None
        placeholder, header = self._header(0, 0), self._header(a, a + self.num_classes)
        assert len(placeholder) == len(header)
        with open(self.path, "r+b") as f:
            f.seek(_HEADER_OFFSET)
            f.write(header)
        h, w = self.image_size
        (self.out_dir / "property").write_text(f"{self.num_classes},{h},{w}\n")

    def __enter__(self) -> "InsightfaceWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
