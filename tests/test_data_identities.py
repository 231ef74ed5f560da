"""Labels from insightface's identity records: equal to a full header scan, cheap to open, strict when
damaged; the flat layout's labels cache; rec validate's comparison of every header."""
from __future__ import annotations

import mmap
import subprocess
import sys
from pathlib import Path

import cv2
import mxnet as mx
import numpy as np
import pytest

from pfc_mx.data import identities, label_cache
from pfc_mx.data.page_cache import evict, resident_bytes
from pfc_mx.data.record_format import read_index
from pfc_mx.data.recordio import RecordDataset
from pfc_mx.data.shaped import index_text, write_shaped
from pfc_mx.data.writer import FlatWriter, InsightfaceWriter
from pfc_mx.errors import DatasetError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PFC_MX_DATA_CACHE", str(tmp_path / "cache"))


def png(seed: int) -> bytes:
    return cv2.imencode(".png", np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8))[1].tobytes()


def plain_mx_insightface(folder: Path, counts, order=None, array_labels=False, shift=0):
    """insightface's layout written by plain mx.recordio: record 0 (a, b), images, identity records.

    order: the order in which the classes' image blocks lie in the file (default: class order;
    identity record a + c always holds class c's range); shift: move every inner range bound by
    this many images (inconsistent identity records). Returns the header labels of images 1 … a − 1."""
    folder.mkdir(parents=True, exist_ok=True)
    w = mx.recordio.MXIndexedRecordIO(str(folder / "train.idx"), str(folder / "train.rec"), "w")
    counts = np.asarray(counts)
    n, c = int(counts.sum()), len(counts)
    a, b = n + 1, n + 1 + c
    order = np.arange(c) if order is None else np.asarray(order)
    w.write_idx(0, mx.recordio.pack(mx.recordio.IRHeader(2, [a, b], 0, 0), b""))
    labels = np.repeat(order, counts[order])
    for k, label in enumerate(labels, start=1):
        lab = [float(label), 7.0] if array_labels else float(label)
        w.write_idx(k, mx.recordio.pack(mx.recordio.IRHeader(0, lab, k, 0), png(k)))
    ends_in_file = 1 + np.cumsum(counts[order])
    ends = np.empty(c, np.int64)
    ends[order] = ends_in_file
    starts = ends - counts
    inner = (starts > 1)
    starts[inner] += shift
    ends[ends < a] += shift
    for cls in range(c):
        w.write_idx(a + cls, mx.recordio.pack(mx.recordio.IRHeader(0, [float(starts[cls]), float(ends[cls])],
                                                                   a + cls, 0), b""))
    w.close()
    (folder / "property").write_text(f"{c},112,112\n")
    return labels


def scanned(folder: Path) -> np.ndarray:
    return RecordDataset(folder, labels_from="headers").labels


@pytest.mark.parametrize("array_labels", [False, True])
def test_identity_labels_equal_a_full_header_scan_plain_mxnet(tmp_path, array_labels):
    labels = plain_mx_insightface(tmp_path, [3, 1, 4, 0, 2], array_labels=array_labels)
    ds = RecordDataset(tmp_path)
    assert ds.label_source == "identity records"
    assert ds.labels.tolist() == labels.tolist() == scanned(tmp_path).tolist()
    assert ds.identity_ranges().tolist() == [[1, 4], [4, 5], [5, 9], [9, 9], [9, 11]]


def test_identity_records_in_any_order_give_the_same_labels(tmp_path):
    labels = plain_mx_insightface(tmp_path, [2, 3, 1, 0, 2], order=[2, 0, 3, 4, 1])
    ds = RecordDataset(tmp_path)
    assert ds.label_source == "identity records"
    assert ds.labels.tolist() == labels.tolist() == scanned(tmp_path).tolist() == [2, 0, 0, 4, 4, 1, 1, 1]
    assert ds.identity_ranges().tolist() == [[2, 4], [6, 9], [1, 2], [4, 4], [4, 6]]


def test_our_writer_and_the_shaped_writer_agree_with_the_headers(tmp_path):
    with InsightfaceWriter(tmp_path / "ours", 4) as w:
        for k, label in enumerate([0, 0, 1, 3, 3, 3]):
            w.add(png(k), label)
    ds = RecordDataset(tmp_path / "ours")
    assert ds.label_source == "identity records" and ds.labels.tolist() == scanned(tmp_path / "ours").tolist()
    write_shaped(tmp_path / "shaped", 5000, 77, seed=3)
    ds = RecordDataset(tmp_path / "shaped")
    assert ds.labels.tolist() == scanned(tmp_path / "shaped").tolist()
    r = mx.recordio.MXIndexedRecordIO(str(tmp_path / "shaped/train.idx"), str(tmp_path / "shaped/train.rec"), "r")
    assert [mx.recordio.unpack(r.read_idx(k))[0].label for k in (1, 2500, 5000)] == ds.labels[[0, 2499, 4999]].tolist()


def test_index_text_is_what_mxnet_writes():
    keys, offsets = np.array([0, 9, 10, 12345]), np.array([0, 40, 1000000, 7])
    assert index_text(keys, offsets) == b"0\t0\n9\t40\n10\t1000000\n12345\t7\n"


def test_inconsistent_identity_records_stop_the_open_naming_the_record(tmp_path):
    plain_mx_insightface(tmp_path, [40] * 12, shift=1)
    with pytest.raises(DatasetError, match=r"image record \d+ has class \d+ in its header, but identity record "
                                           r"\d+ puts it in class \d+"):
        RecordDataset(tmp_path)


def test_ranges_with_a_gap_name_the_identity_record(tmp_path):
    ranges = np.array([[1, 4], [5, 6]], np.float32)
    with pytest.raises(DatasetError, match="identity record 7 has range \\[5, 6\\).*gap or an overlap"):
        identities.tile(ranges, 6, "x.rec")


def test_damaged_identity_record_gives_one_line_and_exit_2(tmp_path):
    plain_mx_insightface(tmp_path, [2, 2, 2])
    data = bytearray((tmp_path / "train.rec").read_bytes())
    offsets = dict(map(int, line.split()) for line in (tmp_path / "train.idx").read_text().splitlines())
    data[offsets[8] + 8] = 0  # identity record 8's flag: 2 -> 0
    (tmp_path / "train.rec").write_bytes(bytes(data))
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "rec.py"), "inspect", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = [x for x in (r.stdout + r.stderr).splitlines() if x.strip()]
    assert len(lines) == 1 and "identity record 8" in lines[0] and "damaged" in lines[0]


def test_validate_lists_every_header_that_disagrees_with_the_identity_records(tmp_path, capsys):
    from pfc_mx.cli.rec import main
    plain_mx_insightface(tmp_path, [3, 3, 3], shift=1)
    assert main(["validate", str(tmp_path), "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert out.count("identity mismatch: record") == 2 and "2 identity mismatch" in out and "FAILED" in out


def test_float32_bounds_past_2_pow_24_are_resolved_from_the_headers():
    true_bounds = np.array([16_777_213, 16_777_217, 16_777_219, 16_777_222])  # odd ones round in float32
    a = 16_777_230
    starts = np.concatenate(([1], true_bounds)).astype(np.float32)
    ends = np.concatenate((true_bounds, [a])).astype(np.float32)
    tiling = identities.tile(np.stack((starts, ends), 1), a, "x.rec")
    labels, windows = tiling.labels(), tiling.windows
    truth = np.repeat(np.arange(5), np.diff(np.concatenate(([1], true_bounds, [a]))))
    assert labels.size == truth.size == a - 1
    wrong = np.flatnonzero(labels != truth)
    assert wrong.size > 0 and np.isin(wrong, windows).all()  # rounding moved bounds, all inside the windows
    # brute force: every integer that rounds to a stored bound is a possible true bound; the images
    # whose class differs between those possibilities are exactly the windows
    possible = set()
    for v in ends[:-1].astype(np.int64):
        cands = [t for t in range(v - 4, v + 5) if int(np.float32(t)) == v]
        possible.update(range(min(cands) - 1, max(cands) - 1))  # image indices of keys min … max − 1
    assert sorted(possible) == windows.tolist() and len(windows) <= 2 * 3
    assert not np.isin(16_777_213 - 1, windows)  # exact below 2**24: no header read


def test_record_0_bounds_past_2_pow_24_are_found_where_images_turn_to_identities(tmp_path):
    a, b = 16_777_219, 16_777_223  # float32 rounds both to 16_777_220 and 16_777_224
    w = mx.recordio.MXIndexedRecordIO(str(tmp_path / "t.idx"), str(tmp_path / "t.rec"), "w")
    for k in range(a - 6, b + 3):
        if k < a:
            w.write_idx(k, mx.recordio.pack(mx.recordio.IRHeader(0, 1.0, k, 0), png(k)))
        elif k < b:
            w.write_idx(k, mx.recordio.pack(mx.recordio.IRHeader(0, [1.0, 2.0], k, 0), b""))
    w.close()
    keys, offsets = read_index(tmp_path / "t.idx")
    buf = np.fromfile(tmp_path / "t.rec", np.uint8)
    fa, fb = float(np.float32(a)), float(np.float32(b))
    assert (fa, fb) != (a, b)
    assert identities.resolve_bounds(buf, keys, offsets, fa, fb, "t.rec") == (a, b)


def test_a_cold_open_reads_the_index_identities_and_a_sample_only(tmp_path):
    s = write_shaped(tmp_path / "d", 100_000, 2_000, image_bytes=3_000)  # 300 MB, real faces' record size
    rec = tmp_path / "d" / "train.rec"
    if not evict(rec):
        pytest.skip("this file system keeps the file's pages (tmpfs?): a cold open cannot be measured here")
    ds = RecordDataset(tmp_path / "d")
    assert ds.label_source == "identity records" and ds.num_images == 100_000
    read = resident_bytes(rec)
    sampled = identities.SAMPLE_IMAGES + 2 * identities.SAMPLE_IDENTITIES
    bound = 2_000 * 40 + 2 * sampled * (3_032 + 4096) + (1 << 20)  # identities + sample (2 pages each) + 1 MiB
    assert read <= bound and read <= 0.05 * s["rec_bytes"], (read, bound)


def test_flat_labels_are_cached_outside_the_data_and_invalidated_by_a_change(tmp_path):
    data = tmp_path / "flat"
    data.mkdir()
    with FlatWriter(data / "train.rec") as w:
        for k in range(20):
            w.add(png(k), k % 4)
    before = sorted(p.name for p in data.iterdir())
    first = RecordDataset(data)
    assert first.label_source == "header scan" and len(list(label_cache.cache_dir().glob("[0-9a-f]*.npy"))) == 1
    second = RecordDataset(data)
    assert second.label_source == "labels cache" and second.labels.tolist() == first.labels.tolist()
    assert sorted(p.name for p in data.iterdir()) == before  # nothing written beside the user's data
    with FlatWriter(data / "train.rec") as w:  # rewritten with other labels
        for k in range(20):
            w.add(png(k), 3 - k % 4)
    third = RecordDataset(data)
    assert third.label_source == "header scan" and third.labels.tolist() == [3 - k % 4 for k in range(20)]


@pytest.mark.parametrize("keys", [list(range(0, 50)), list(range(5, 40)) + [3, 90, 41, 3]])
def test_read_index_equals_mxnets_own_reading_in_small_blocks(tmp_path, keys):
    from pfc_mx.data.record_format import KeyRange
    w = mx.recordio.MXIndexedRecordIO(str(tmp_path / "t.idx"), str(tmp_path / "t.rec"), "w")
    for k in keys:
        w.write_idx(k, mx.recordio.pack(mx.recordio.IRHeader(0, float(k), k, 0), png(k)))
    w.close()
    r = mx.recordio.MXIndexedRecordIO(str(tmp_path / "t.idx"), str(tmp_path / "t.rec"), "r")
    got_keys, got_offsets = read_index(tmp_path / "t.idx", block=37)  # blocks cut lines anywhere
    assert isinstance(got_keys, KeyRange) == (keys == list(range(50)))
    assert np.asarray(got_keys).tolist() == sorted(r.idx) and got_offsets.tolist() == [r.idx[k] for k in sorted(r.idx)]


def test_the_parsed_index_is_kept_shared_and_parsed_again_when_the_index_changes(tmp_path, monkeypatch):
    from pfc_mx.data import recordio
    plain_mx_insightface(tmp_path / "d", [3, 2, 4])
    first = RecordDataset(tmp_path / "d")
    parsed = []
    monkeypatch.setattr(recordio, "read_index", lambda *a, **k: parsed.append(1) or read_index(*a, **k))
    second = RecordDataset(tmp_path / "d")
    base = second.offsets
    while getattr(base, "base", None) is not None:
        base = base.base
    assert parsed == [] and isinstance(base, mmap.mmap)  # from the cache, mapped: one copy per host
    assert second.offsets.tolist() == first.offsets.tolist() and second.labels.tolist() == first.labels.tolist()
    plain_mx_insightface(tmp_path / "d", [2, 2, 5])  # rewritten: another index
    third = RecordDataset(tmp_path / "d")
    assert parsed == [1] and third.labels.tolist() == [0, 0, 1, 1, 2, 2, 2, 2, 2]


def test_training_on_inconsistent_identity_records_stops_with_one_line_and_exit_2(tmp_path):
    plain_mx_insightface(tmp_path / "data", [30] * 8, shift=1)
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, str(ROOT / "train_horovod.py"), str(ROOT / "configs" / "demo.yaml"), "--set",
                        f"data.rec={tmp_path / 'data'}", f"output.dir={out}", "eval.targets=[]"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    errors = [x for x in r.stderr.splitlines() if "identity record" in x]
    assert len(errors) == 1 and "disagree with the images" in errors[0]
    assert not list(out.rglob("step-*"))  # nothing trained, nothing saved
    assert errors[0].split("Error: ")[-1] in (out / "logs" / "rank0.log").read_text()  # in the run's log too
