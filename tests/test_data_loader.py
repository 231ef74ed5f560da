"""pfc_mx.data.loader + augment: right images with right labels, reproducible, corrupt-tolerant."""
from __future__ import annotations

import logging

import cv2
import numpy as np
import pytest

from pfc_mx.data import augment
from pfc_mx.data.loader import RecordLoader
from pfc_mx.data.recordio import RecordDataset
from pfc_mx.data.sampler import ShardedSampler
from pfc_mx.data.writer import InsightfaceWriter
from pfc_mx.errors import DatasetError


def coded_image(i: int, size: int = 112) -> np.ndarray:
    """RGB image that encodes its index: left half (i % 256, i // 256, 10), right half (200, 100, 50)."""
    img = np.empty((size, size, 3), np.uint8)
    img[:, : size // 2] = (i % 256, i // 256, 10)
    img[:, size // 2:] = (200, 100, 50)
    return img


def encode(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", rgb[:, :, ::-1])[1].tobytes()


def make_dataset(folder, n=40, classes=5, corrupt=(), sizes=None):
    """n images, image i of class i * classes // n; records listed in `corrupt` are broken JPEGs."""
    truncated_jpeg = cv2.imencode(".jpg", coded_image(0))[1].tobytes()[:200]
    with InsightfaceWriter(folder, classes) as w:
        for i in range(n):
            size = sizes[i % len(sizes)] if sizes else 112
            data = truncated_jpeg if i in corrupt else encode(coded_image(i, size))
            w.add(data, i * classes // n)
    return RecordDataset(folder)


def index_of(images: np.ndarray) -> np.ndarray:
    """Recover the image index from a (B, 3, H, W) batch, whichever way each image was mirrored."""
    left, right = images[:, :, 0, 0].astype(int), images[:, :, 0, -1].astype(int)
    coded = np.where((left[:, 2:3] == 10), left, right)
    return coded[:, 0] + 256 * coded[:, 1]


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("loader"))


def collect(loader, epoch, start=0):
    return [(x.copy(), y.copy()) for x, y in loader.epoch(epoch, start)]


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_hold_the_sampled_images_with_their_labels(ds, workers):
    with RecordLoader(ds, 6, rank=1, world_size=2, seed=4, num_workers=workers) as loader:
        batches = collect(loader, epoch=1)
    expected = ShardedSampler(40, 6, 1, 2, seed=4).indices(1)
    assert len(batches) == loader.batches_per_epoch == 3
    for (images, labels), idx in zip(batches, expected):
        assert images.shape == (6, 3, 112, 112) and images.dtype == np.uint8
        assert labels.dtype == np.int32
        np.testing.assert_array_equal(index_of(images), idx)
        np.testing.assert_array_equal(labels, ds.labels[idx])


@pytest.mark.parametrize("world", [1, 2, 3])
def test_rank_loaders_deliver_disjoint_images_and_equal_batch_counts(ds, world):
    seen = []
    for rank in range(world):
        with RecordLoader(ds, 4, rank=rank, world_size=world, seed=8, num_workers=0) as loader:
            batches = collect(loader, 0)
        assert len(batches) == 40 // (4 * world)
        seen.append(np.concatenate([index_of(x) for x, _ in batches]))
    flat = np.concatenate(seen)
    assert len(set(flat.tolist())) == len(flat) == 40 - 40 % (4 * world)


def test_worker_count_does_not_change_any_batch(ds):
    runs = []
    for workers in (0, 1, 2):
        with RecordLoader(ds, 8, seed=9, num_workers=workers, color_jitter=0.3, prefetch=3) as loader:
            runs.append(collect(loader, 0) + collect(loader, 1))
    for other in runs[1:]:
        for (a, la), (b, lb) in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(la, lb)


def test_resume_mid_epoch_yields_the_identical_batches(ds):
    with RecordLoader(ds, 4, seed=2, num_workers=2, color_jitter=0.2) as loader:
        full = collect(loader, 3)
        resumed = collect(loader, 3, start=4)
    assert len(resumed) == len(full) - 4
    for (a, la), (b, lb) in zip(full[4:], resumed):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)


def test_mirror_flips_the_images_drawn_from_the_step_seed(ds):
    seed, epoch, rank = 5, 2, 0
    with RecordLoader(ds, 10, seed=seed, num_workers=0) as loader:
        batches = collect(loader, epoch)
    flips = []
    for step, ((images, _), idx) in enumerate(zip(batches, ShardedSampler(40, 10, 0, 1, seed).indices(epoch))):
        source = np.stack([coded_image(int(i)).transpose(2, 0, 1) for i in idx])
        flip = augment.draw(np.random.default_rng([seed, epoch, step, rank]), 10)["flip"]
        np.testing.assert_array_equal(images, np.where(flip[:, None, None, None], source[..., ::-1], source))
        flips.append(flip)
    assert 0 < np.concatenate(flips).mean() < 1
    with RecordLoader(ds, 10, seed=seed, num_workers=0, mirror=False) as loader:
        images, _ = next(loader.epoch(epoch))
    assert (images[:, 2, 0, 0] == 10).all()  # nothing mirrored


def test_images_of_other_sizes_are_resized_to_112(tmp_path):
    ds = make_dataset(tmp_path, n=9, classes=3, sizes=[64, 150, 112])
    with RecordLoader(ds, 3, num_workers=0, mirror=False) as loader:
        for (images, labels), idx in zip(loader.epoch(0), ShardedSampler(9, 3, 0, 1).indices(0)):
            assert images.shape == (3, 3, 112, 112)
            np.testing.assert_array_equal(index_of(images), idx)
            np.testing.assert_array_equal(images[:, :, 50, 100], [[200, 100, 50]] * 3)


def test_corrupt_jpeg_is_skipped_counted_and_replaced(tmp_path, caplog):
    ds = make_dataset(tmp_path, n=40, corrupt={7})
    caplog.set_level(logging.WARNING, logger="pfc_mx.data.loader")
    with RecordLoader(ds, 8, seed=1, num_workers=2, max_corrupt_fraction=0.05) as loader:
        batches = collect(loader, 0)  # 5 steps of 8 use every record, the corrupt one included
        assert loader.state()["corrupt_records"] == [7]
        collect(loader, 1)
        assert loader.state()["corrupt_records"] == [7]  # distinct records, not occurrences
    assert all(x.shape == (8, 3, 112, 112) for x, _ in batches)
    seen = np.concatenate([index_of(x) for x, _ in batches])
    assert 7 not in seen and len(seen) == 40
    for images, labels in batches:  # a replacement carries its own label
        np.testing.assert_array_equal(labels, ds.labels[index_of(images)])
    assert any("corrupt record 8 (image 7)" in r.getMessage() for r in caplog.records)


def test_corrupt_replacement_is_the_same_with_and_without_workers(tmp_path):
    ds = make_dataset(tmp_path, n=24, corrupt={3, 4})
    out = []
    for workers in (0, 2):
        with RecordLoader(ds, 6, seed=3, num_workers=workers, max_corrupt_fraction=0.1) as loader:
            out.append(np.concatenate([index_of(x) for x, _ in loader.epoch(0)]))
    np.testing.assert_array_equal(out[0], out[1])


def test_more_corrupt_records_than_allowed_stop_with_dataset_error(tmp_path):
    ds = make_dataset(tmp_path, n=40, corrupt={1, 2, 3})
    with RecordLoader(ds, 8, num_workers=2, max_corrupt_fraction=0.05) as loader:  # 2 of 40 allowed
        with pytest.raises(DatasetError, match="corrupt records exceed max_corrupt_fraction"):
            collect(loader, 0)


def test_corrupt_records_met_before_a_resume_count_toward_the_epoch_budget(tmp_path):
    order = ShardedSampler(40, 8, 0, 1, seed=2).indices(0)  # (5 steps, 8) image indices of epoch 0
    first, second, third = int(order[0, 0]), int(order[1, 0]), int(order[3, 0])
    ds = make_dataset(tmp_path, n=40, corrupt={first, second, third})
    with RecordLoader(ds, 8, seed=2, num_workers=0, max_corrupt_fraction=0.05) as loader:  # 2 of 40 allowed
        batches = loader.epoch(0)
        for _ in range(3):
            next(batches)
        saved = loader.state()  # what a checkpoint after step 3 keeps of this rank
        assert saved["corrupt_in_epoch"] == saved["corrupt_records"] == sorted([first, second])
    with RecordLoader(ds, 8, seed=2, num_workers=0, max_corrupt_fraction=0.05) as resumed:
        resumed.restore(saved)
        with pytest.raises(DatasetError, match=r"3 corrupt records exceed"):
            list(resumed.epoch(0, start_step=3))
    with RecordLoader(ds, 8, seed=2, num_workers=0, max_corrupt_fraction=0.05) as unaware:
        unaware.restore({"corrupt_in_epoch": [10_000]})  # not in the shard: not counted
        assert len(list(unaware.epoch(0, start_step=3))) == 2
        assert unaware.state()["corrupt_in_epoch"] == [third]


def test_a_new_epoch_supersedes_an_abandoned_iterator(ds):
    with RecordLoader(ds, 4, seed=6, num_workers=0) as ref:
        expected = collect(ref, 1)
    with RecordLoader(ds, 4, seed=6, num_workers=2, prefetch=4) as loader:
        old = loader.epoch(0)
        next(old)  # leaves prefetched batches in flight
        got = collect(loader, 1)
        with pytest.raises(RuntimeError, match="superseded"):
            next(old)
        workers = list(loader._workers)
    for (a, la), (b, lb) in zip(expected, got):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)
    assert workers and not any(p.is_alive() for p in workers)  # close() stopped them


# ------------------------------------------------------------------ augment against plain per-image references
def test_mirror_matches_numpy_flip():
    x = np.random.default_rng(0).integers(0, 256, (4, 3, 5, 7), dtype=np.uint8)
    flip = np.array([True, False, True, False])
    out = augment.mirror(x, flip)
    for i in range(4):
        np.testing.assert_array_equal(out[i], np.flip(x[i], axis=2) if flip[i] else x[i])


def test_color_jitter_matches_a_per_image_reference():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (3, 3, 6, 5), dtype=np.uint8)
    b, c, s = (rng.uniform(0.6, 1.4, 3) for _ in range(3))
    out = augment.color_jitter(x, b.astype(np.float32), c.astype(np.float32), s.astype(np.float32))
    for i in range(3):
        img = x[i].astype(np.float64) * b[i]
        grey = 0.299 * np.clip(img[0], 0, 255) + 0.587 * np.clip(img[1], 0, 255) + 0.114 * np.clip(img[2], 0, 255)
        img = grey + (img - grey) * s[i]
        img = grey.mean() + (img - grey.mean()) * c[i]
        ref = np.clip(np.rint(img), 0, 255)
        assert np.abs(out[i].astype(int) - ref).max() <= 1
    ident = augment.color_jitter(x, *(np.ones(3, np.float32),) * 3)
    np.testing.assert_array_equal(ident, x)
