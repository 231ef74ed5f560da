"""A loader's bookkeeping of damaged and wrongly sized images (pfc_mx.data.health), on plain index sets."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from pfc_mx.data.health import DataHealth, describe, merge
from pfc_mx.errors import DatasetError

DATA = SimpleNamespace(keys=np.arange(100) + 1, path="data/train.rec")  # record key = image index + 1


def health(limit_images: int = 100, fraction: float = 0.03) -> DataHealth:
    return DataHealth(DATA, limit_images, fraction, "resize")


def test_counts_are_distinct_per_run_and_per_epoch_and_stop_past_the_epoch_limit():
    h = health()  # 3 of 100 allowed per epoch
    h.start_epoch(np.arange(100))
    h.note_corrupt({5: "cut short", 9: "no EOI"})
    h.note_corrupt({5: "cut short"})
    assert h.state() == {"corrupt_records": [5, 9], "corrupt_in_epoch": [5, 9], "wrong_size": []}
    h.start_epoch(np.arange(100))
    h.note_corrupt({5: "cut short"})
    assert h.state()["corrupt_in_epoch"] == [5] and h.state()["corrupt_records"] == [5, 9]
    h.note_corrupt({1: "x", 2: "y"})
    with pytest.raises(DatasetError, match=r"4 corrupt records exceed max_corrupt_fraction 0.03 of the 100 "
                                           r"images this rank reads per epoch \(first: record 2\)"):
        h.note_corrupt({3: "z"})


def test_merge_is_the_union_of_the_ranks_states():
    ranks = [{"corrupt_records": [4, 1], "corrupt_in_epoch": [4], "wrong_size": [7]},
             {"corrupt_records": [1, 2], "corrupt_in_epoch": [], "wrong_size": []}, {}]
    assert merge(ranks) == {"corrupt_records": [1, 2, 4], "corrupt_in_epoch": [4], "wrong_size": [7]}


@pytest.mark.parametrize("mid_epoch", [True, False])
def test_restore_counts_the_interrupted_epoch_only_when_resuming_inside_it(mid_epoch):
    h = health()
    h.restore({"corrupt_records": [5, 9, 40], "corrupt_in_epoch": [5, 40], "wrong_size": [3]}, mid_epoch)
    h.start_epoch(np.arange(30))  # image 40 is another rank's
    assert h.state() == {"corrupt_records": [5, 9, 40], "corrupt_in_epoch": [5] if mid_epoch else [],
                         "wrong_size": [3]}
    h.start_epoch(np.arange(30))  # the restored epoch counts once
    assert h.state()["corrupt_in_epoch"] == []


def test_describe_names_the_first_record_keys():
    assert describe(DATA, [0, 1]) == "1, 2"
    assert describe(DATA, list(range(12)), limit=3) == "1, 2, 3, ..."
