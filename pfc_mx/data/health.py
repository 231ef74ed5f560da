"""A loader's record of what was not a sound 112x112x3 image: damaged records and images of another size.

Image indices throughout (positions in the RecordDataset, not record keys). `state()` is what
a checkpoint keeps of one rank, `merge` joins the ranks' states, `restore` hands a merged
state back to a resumed loader.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, List, Set

import numpy as np

from pfc_mx.data.options import IMAGE_SIZE
from pfc_mx.data.recordio import RecordDataset
from pfc_mx.errors import DatasetError

log = logging.getLogger("pfc_mx.data.loader")


class DataHealth:
    """Damaged records (skipped, per run and per epoch, with the epoch's limit) and wrongly sized images."""

    def __init__(self, dataset: RecordDataset, images_per_epoch: int, max_corrupt_fraction: float,
                 on_wrong_size: str) -> None:
        self.dataset = dataset
        self.images_per_epoch = images_per_epoch  # this rank's, for max_corrupt_fraction
        self.max_corrupt_fraction = float(max_corrupt_fraction)
        self.on_wrong_size = on_wrong_size
        self.corrupt: Set[int] = set()  # every distinct corrupt record met
        self.epoch_corrupt: Set[int] = set()  # those met in the current epoch
        self.wrong_size: Dict[int, str] = {}  # every distinct image of another size or channel count: 'WxHxC'
        self._resumed: List[int] = []  # the interrupted epoch's corrupt records, for the next start_epoch

    def start_epoch(self, shard: np.ndarray) -> None:
        """A new epoch iterator over `shard` (this rank's image indices of the epoch). After a
        restore, the interrupted epoch's corrupt records in the shard count toward its limit again."""
        met, self._resumed = np.asarray(self._resumed, dtype=np.int64), []
        self.epoch_corrupt = set(np.intersect1d(met, shard).tolist())

    def note_corrupt(self, corrupt: Dict[int, str]) -> None:
        """Count damaged records ({image index: why}); DatasetError past the epoch's limit."""
        for i in sorted(set(corrupt) - self.corrupt):
            log.warning("skipping corrupt record %d (image %d) of %s: %s; replaced by a spare",
                        self.dataset.keys[i], i, self.dataset.path, corrupt[i])
        self.corrupt.update(corrupt)
        fresh = set(corrupt) - self.epoch_corrupt
        self.epoch_corrupt.update(fresh)
        if fresh and len(self.epoch_corrupt) > self.max_corrupt_fraction * self.images_per_epoch:
            raise DatasetError(f"{self.dataset.path}: {len(self.epoch_corrupt)} corrupt records exceed "
                               f"max_corrupt_fraction {self.max_corrupt_fraction:g} of the "
                               f"{self.images_per_epoch} images this rank reads per epoch "
                               f"(first: record {self.dataset.keys[min(self.epoch_corrupt)]})")

    def note_wrong_size(self, wrong: Dict[int, str]) -> None:
        """Keep images of another size or channel count ({image index: 'WxHxC'}); log the first few, then
        every 1000th."""
        for i, shape in wrong.items():
            if i in self.wrong_size:
                continue
            self.wrong_size[i] = shape
            n = len(self.wrong_size)
            if n <= 5 or n % 1000 == 0:
                what = "resized" if self.on_wrong_size == "resize" else "skipped"
                log.warning("%s record %d (image %d) of %s: it is %s (WxHxC), not %dx%dx3 (data.on_wrong_size %s; "
                            "%d such image(s) so far)", what, self.dataset.keys[i], i, self.dataset.path, shape,
                            IMAGE_SIZE, IMAGE_SIZE, self.on_wrong_size, n)

    def state(self) -> Dict[str, List[int]]:
        """This rank's record: corrupt_records (the run's), corrupt_in_epoch, wrong_size (image indices)."""
        return {"corrupt_records": sorted(self.corrupt), "corrupt_in_epoch": sorted(self.epoch_corrupt),
                "wrong_size": sorted(self.wrong_size)}

    def restore(self, state: Dict[str, Any], mid_epoch: bool) -> None:
        """Continue from a (merged) state: its damaged and wrongly sized images are known, and when the
        run resumes mid-epoch, the corrupt records of that epoch count toward the limit of the next
        epoch iterator."""
        self.corrupt.update(int(i) for i in state.get("corrupt_records", []))
        for i in state.get("wrong_size", []):
            self.wrong_size.setdefault(int(i), "?")
        self._resumed = [int(i) for i in state.get("corrupt_in_epoch", [])] if mid_epoch else []


def merge(states: Iterable[Dict[str, Any]]) -> Dict[str, List[int]]:
    """The union of ranks' states, key by key (sorted image indices)."""
    merged: Dict[str, Set[int]] = {"corrupt_records": set(), "corrupt_in_epoch": set(), "wrong_size": set()}
    for state in states:
        for key, values in merged.items():
            values.update(int(i) for i in state.get(key, []))
    return {key: sorted(values) for key, values in merged.items()}


def describe(dataset: RecordDataset, indices: List[int], limit: int = 10) -> str:
    """'key, key, ...' for the first `limit` image indices of dataset."""
    keys = ", ".join(str(dataset.keys[i]) for i in indices[:limit])
    return keys + (", ..." if len(indices) > limit else "")
