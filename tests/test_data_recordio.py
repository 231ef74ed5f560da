"""pfc_mx.data.recordio: both layouts, MXNet's own writer, and every malformed-dataset error."""
from __future__ import annotations

import struct
from pathlib import Path

import cv2
import mxnet as mx
import numpy as np
import pytest

from pfc_mx.data.record_format import MAGIC
from pfc_mx.data.recordio import RecordDataset
from pfc_mx.data.writer import FlatWriter, InsightfaceWriter
from pfc_mx.errors import DatasetError


def png(seed: int, size: int = 112) -> bytes:
    img = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return cv2.imencode(".png", img)[1].tobytes()


def mx_indexed(folder: Path, name: str = "train") -> mx.recordio.MXIndexedRecordIO:
    folder.mkdir(parents=True, exist_ok=True)
    return mx.recordio.MXIndexedRecordIO(str(folder / f"{name}.idx"), str(folder / f"{name}.rec"), "w")


def write_insightface(folder: Path, labels, num_classes=None, images=None):
    images = images or [png(i, 8) for i in range(len(labels))]
    with InsightfaceWriter(folder, num_classes or max(labels) + 1) as w:
        for img, label in zip(images, labels):
            w.add(img, label)
    return images


def test_insightface_writer_round_trip_bytes_labels_and_identity_ranges(tmp_path):
    labels = [0, 0, 0, 1, 2, 2]
    images = write_insightface(tmp_path, labels, num_classes=4)
    ds = RecordDataset(tmp_path)
    assert (ds.layout, ds.num_images, ds.num_classes, len(ds)) == ("insightface", 6, 4, 6)
    assert ds.labels.dtype == np.int32 and ds.labels.tolist() == labels
    assert ds.class_counts.tolist() == [3, 1, 2, 0]
    assert [ds.read(i) for i in range(6)] == list(zip(images, labels))
    assert ds.identity_ranges().tolist() == [[1, 4], [4, 5], [5, 7], [7, 7]]
    assert ds.image_size == (112, 112)


def test_rec_path_and_folder_open_the_same_dataset(tmp_path):
    write_insightface(tmp_path, [0, 1, 1])
    a, b = RecordDataset(tmp_path), RecordDataset(tmp_path / "train.rec")
    assert a.path == b.path and a.labels.tolist() == b.labels.tolist()


def test_mxnet_written_insightface_layout_reads_correctly(tmp_path):
    """Written with mx.recordio directly, header last as the classic tools do, array labels on some images."""
    labels = [0, 0, 1, 1, 1, 2]
    images = [png(10 + i) for i in range(len(labels))]
    rec = mx_indexed(tmp_path)
    ranges = {}
    for k, (img, label) in enumerate(zip(images, labels), start=1):
        lab = [float(label), 7.0] if k % 2 else float(label)  # flag 2 for odd keys, flag 0 otherwise
        rec.write_idx(k, mx.recordio.pack(mx.recordio.IRHeader(0, lab, k, 0), img))
        lo, _ = ranges.get(label, (k, k))
        ranges[label] = (lo, k + 1)
    a = len(labels) + 1
    for c in range(3):
        rec.write_idx(a + c, mx.recordio.pack(mx.recordio.IRHeader(0, [float(v) for v in ranges[c]], 0, 0), b""))
    rec.write_idx(0, mx.recordio.pack(mx.recordio.IRHeader(0, [float(a), float(a + 3)], 0, 0), b""))
    rec.close()
    (tmp_path / "property").write_text("3,112,112")
    ds = RecordDataset(tmp_path)
    assert (ds.layout, ds.num_images, ds.num_classes) == ("insightface", 6, 3)
    assert ds.labels.tolist() == labels
    for i in range(6):
        img, label = ds.read(i)
        assert img == images[i] and label == labels[i]
        np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(img, np.uint8), cv2.IMREAD_COLOR),
                                      cv2.imdecode(np.frombuffer(images[i], np.uint8), cv2.IMREAD_COLOR))
    assert ds.identity_ranges().tolist() == [list(ranges[c]) for c in range(3)]


def test_flat_layout_with_sparse_keys_and_no_property(tmp_path):
    rec = mx_indexed(tmp_path, "flat")
    keys, labels = [3, 10, 11, 40], [2, 0, 5, 2]
    for k, label in zip(keys, labels):
        rec.write_idx(k, mx.recordio.pack(mx.recordio.IRHeader(0, float(label), k, 0), png(k, 8)))
    rec.close()
    ds = RecordDataset(tmp_path / "flat.rec")
    assert (ds.layout, ds.num_images, ds.num_classes) == ("flat", 4, 6)  # max label + 1
    assert ds.keys.tolist() == keys and ds.labels.tolist() == labels
    assert [ds.read(i)[0] for i in range(4)] == [png(k, 8) for k in keys]


def test_flat_writer_record_zero_is_an_image(tmp_path):
    with FlatWriter(tmp_path / "train.rec") as w:
        for i in range(3):
            w.add(png(i, 8), i)
    ds = RecordDataset(tmp_path)
    assert ds.layout == "flat" and ds.labels.tolist() == [0, 1, 2] and ds.read(0)[0] == png(0, 8)


def test_record_split_around_magic_number_reads_like_mxnet(tmp_path):
    """dmlc cuts a payload wherever the magic number sits at an aligned position; we must rejoin it."""
    magic = struct.pack("<I", MAGIC)
    tricky = [png(1, 8) + b"\0" * (-len(png(1, 8)) % 4) + magic * 3 + b"tail", magic + b"abc" + magic]
    write_insightface(tmp_path, [0, 1], images=tricky)
    ds = RecordDataset(tmp_path)
    reader = mx.recordio.MXIndexedRecordIO(str(tmp_path / "train.idx"), str(tmp_path / "train.rec"), "r")
    for i in range(2):
        header, payload = mx.recordio.unpack(reader.read_idx(i + 1))
        assert ds.read(i) == (payload, int(header.label)) == (tricky[i], i)


def test_dataset_is_usable_after_pickling_and_in_a_new_process(tmp_path):
    import multiprocessing as mp
    import pickle

    images = write_insightface(tmp_path, [0, 1, 1])
    ds = RecordDataset(tmp_path)
    ds.read(0)  # open a descriptor in this process first
    assert pickle.loads(pickle.dumps(ds)).read(2) == (images[2], 1)
    with mp.get_context("fork").Pool(1) as pool:
        assert pool.map(ds.read, [1, 2]) == [(images[1], 1), (images[2], 1)]


# ------------------------------------------------------------------ errors: one clear line naming the file/record
def error_of(path) -> str:
    with pytest.raises(DatasetError) as e:
        RecordDataset(path)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_truncated_rec_names_file_and_record(tmp_path):
    write_insightface(tmp_path, [0, 0, 1, 1])
    rec = tmp_path / "train.rec"
    data = rec.read_bytes()
    offsets = [int(line.split()[1]) for line in (tmp_path / "train.idx").read_text().splitlines()]
    # cut inside image record 3 (keys in the idx: 0, 1, 2, 3, 4, then identity records)
    rec.write_bytes(data[:offsets[3] + 20])
    msg = error_of(tmp_path)
    assert str(rec) in msg and "record 3" in msg and "truncated" in msg


def test_truncated_rec_with_offsets_past_the_end(tmp_path):
    write_insightface(tmp_path, [0, 1, 2, 3])
    rec = tmp_path / "train.rec"
    offsets = [int(line.split()[1]) for line in (tmp_path / "train.idx").read_text().splitlines()]
    rec.write_bytes(rec.read_bytes()[:offsets[2] - 4])  # records 2.. now start beyond the end
    msg = error_of(tmp_path)
    assert "record" in msg and "beyond the end" in msg and str(rec) in msg


def test_idx_not_matching_rec_is_reported(tmp_path):
    write_insightface(tmp_path, [0, 1, 2])
    idx = tmp_path / "train.idx"
    lines = idx.read_text().splitlines()
    lines[2] = lines[2].split("\t")[0] + "\t" + str(int(lines[2].split("\t")[1]) + 12)
    idx.write_text("\n".join(lines) + "\n")
    msg = error_of(tmp_path)
    assert "record 2" in msg and "bad magic" in msg


@pytest.mark.parametrize("layout", ["insightface", "flat"])
def test_truncated_idx_is_detected(tmp_path, layout):
    if layout == "flat":
        with FlatWriter(tmp_path / "train.rec") as w:
            for i in range(4):
                w.add(png(i, 8), i)
    else:
        write_insightface(tmp_path, [0, 1, 1, 2])
    idx = tmp_path / "train.idx"
    lines = idx.read_text().splitlines()
    RecordDataset(tmp_path)  # whole: fine
    idx.write_text("\n".join(lines[:-1]) + "\n")  # the last record is no longer listed
    msg = error_of(tmp_path)
    assert str(idx) in msg and "truncated .idx" in msg and f"has {(tmp_path / 'train.rec').stat().st_size} bytes" in msg


def test_missing_idx(tmp_path):
    write_insightface(tmp_path, [0, 1])
    (tmp_path / "train.idx").unlink()
    assert "train.idx" in error_of(tmp_path) and "missing" in error_of(tmp_path)


def test_missing_rec(tmp_path):
    assert "no such RecordIO file" in error_of(tmp_path / "nowhere.rec")


def test_label_at_or_above_num_classes_from_property(tmp_path):
    write_insightface(tmp_path, [0, 1, 1, 2, 2])
    (tmp_path / "property").write_text("2,112,112\n")
    msg = error_of(tmp_path)
    assert "record 4 has label 2 >= num_classes 2" in msg and str(tmp_path / "train.rec") in msg
    ds = RecordDataset(tmp_path, strict_labels=False)  # tools can still list all of them
    assert ds.bad_labels.tolist() == [3, 4]


def test_negative_label(tmp_path):
    with FlatWriter(tmp_path / "train.rec") as w:
        w.add(png(0, 8), 0)
        w.add(png(1, 8), -1)
    assert "record 1 has label -1.0" in error_of(tmp_path)


def test_empty_datasets(tmp_path):
    (tmp_path / "a").mkdir()
    with InsightfaceWriter(tmp_path / "a", 3):
        pass  # header and identity records, no image
    assert "empty dataset" in error_of(tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "train.rec").write_bytes(b"")
    (tmp_path / "b" / "train.idx").write_text("")
    assert "empty dataset" in error_of(tmp_path / "b")
    (tmp_path / "c").mkdir()
    with FlatWriter(tmp_path / "c" / "train.rec") as w:
        w.add(png(0, 8), 0)
    (tmp_path / "c" / "train.idx").write_text("")
    assert "empty dataset" in error_of(tmp_path / "c")


def test_malformed_index_and_property(tmp_path):
    write_insightface(tmp_path, [0, 1])
    (tmp_path / "property").write_text("many,112,112")
    assert "property" in error_of(tmp_path)
    (tmp_path / "property").write_text("2,112,112")
    (tmp_path / "train.idx").write_text("0\t0\n1\n")
    assert "malformed index" in error_of(tmp_path)


def test_flat_layout_whose_first_image_has_an_array_label_is_not_taken_for_a_header(tmp_path):
    rec = mx_indexed(tmp_path)
    for k in range(3):
        rec.write_idx(k, mx.recordio.pack(mx.recordio.IRHeader(0, [float(k + 1), 2.0], k, 0), png(k, 8)))
    rec.close()
    ds = RecordDataset(tmp_path)
    assert (ds.layout, ds.num_images, ds.labels.tolist()) == ("flat", 3, [1, 2, 3])
