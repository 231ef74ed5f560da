"""Center files at scale: written and hashed in one pass in row blocks, read back by byte range only.

References: np.save / np.load and hashlib over the file (not our writer), and the kernel's count
of bytes read (/proc/self/io) for "reads only the rows a rank owns".
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import tracemalloc
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from pfc_mx import checkpoint
from pfc_mx.checkpoint import blocks
from pfc_mx.errors import CheckpointError
from tests.test_checkpoint import save

KiB = 1 << 10


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rows(n, d, seed=0):
    return np.random.RandomState(seed).randn(n, d).astype(np.float32)


@pytest.mark.parametrize("n, d, block", [(1000, 16, 4 * KiB), (1000, 16, 1 << 20), (7, 3, 1), (0, 5, 4 * KiB)])
@pytest.mark.parametrize("source", ["numpy", "ndarray"])
def test_write_npy_gives_np_save_bytes_and_the_sha256_of_the_file(tmp_path, n, d, block, source):
    a = rows(n, d)
    np.save(tmp_path / "reference.npy", a)
    ours = tmp_path / "ours.npy"
    digest, nbytes = blocks.write_npy(ours, mx.nd.array(a) if source == "ndarray" else a, block)
    assert ours.read_bytes() == (tmp_path / "reference.npy").read_bytes()
    assert digest == sha(ours) and nbytes == ours.stat().st_size
    np.testing.assert_array_equal(np.load(ours), a)


def test_write_npy_holds_one_block_on_the_host_not_a_copy_of_the_array(tmp_path):
    a = mx.nd.array(rows(16384, 128))   # 8 MiB
    block = 256 * KiB
    tracemalloc.start()
    try:
        blocks.write_npy(tmp_path / "w.npy", a, block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * block, peak     # asnumpy() of the whole array would be 8 MiB
    np.testing.assert_array_equal(np.load(tmp_path / "w.npy"), a.asnumpy())


def test_save_hashes_centers_as_written_and_never_reads_them_back(tmp_path, monkeypatch):
    hashed_after = []
    real = checkpoint.saving.file_sha256
    monkeypatch.setattr(checkpoint.saving, "file_sha256", lambda p: hashed_after.append(p.name) or real(p))
    w, m = rows(50, 8, 1), rows(50, 8, 2)
    folder = save(tmp_path, 2, (0, mx.nd.array(w), mx.nd.array(m)))
    assert hashed_after and not [n for n in hashed_after if n.startswith("centers-")]
    files = json.loads((folder / checkpoint.STATE).read_text())["files"]
    for name, arr in (("centers-000000000-000000050.weight.npy", w), ("centers-000000000-000000050.momentum.npy", m)):
        assert files[name] == sha(folder / name)
        np.testing.assert_array_equal(np.load(folder / name), arr)
    assert checkpoint.check_integrity(folder)["step"] == 2


def test_a_checkpoint_np_save_wrote_verifies_and_loads(tmp_path):
    # the layout of checkpoints written before the block writer: np.save, sha256 read back after
    folder = save(tmp_path, 2, (0, rows(10, 4), rows(10, 4, 1)))
    w, m = rows(10, 4, 5), rows(10, 4, 6)
    state = json.loads((folder / checkpoint.STATE).read_text())
    for kind, arr in (("weight", w), ("momentum", m)):
        name = checkpoint.center_file(0, 10, kind)
        np.save(folder / name, arr)
        state["files"][name] = sha(folder / name)
    (folder / checkpoint.STATE).write_text(json.dumps(state))
    checkpoint.check_integrity(folder)
    gw, gm = mx.nd.zeros((6, 4)), mx.nd.zeros((6, 4))
    checkpoint.load_centers_into(folder, 3, gw, gm)
    np.testing.assert_array_equal(gw.asnumpy(), w[3:9])
    np.testing.assert_array_equal(gm.asnumpy(), m[3:9])


def two_rank_folder(tmp_path, n=1000, d=16, split=600):
    """A checkpoint as 2 ranks write it: classes [0, split) and [split, n); and the whole arrays."""
    w, m = rows(n, d, 1), rows(n, d, 2)
    folder = save(tmp_path, 2, (0, mx.nd.array(w[:split]), mx.nd.array(m[:split])))
    for kind, arr in (("weight", w), ("momentum", m)):
        blocks.write_npy(folder / checkpoint.center_file(split, n, kind), arr[split:])
    return folder, w, m


@pytest.mark.parametrize("world", [1, 2, 3, 7])
@pytest.mark.parametrize("dest", ["numpy", "ndarray"])
def test_every_shard_of_another_world_size_gets_exactly_its_rows(tmp_path, world, dest):
    folder, w, m = two_rank_folder(tmp_path)
    bounds = np.linspace(0, len(w), world + 1).astype(int)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if dest == "numpy":
            gw, gm = checkpoint.load_centers(folder, lo, hi - lo, w.shape[1])
        else:
            gw, gm = mx.nd.full((hi - lo, w.shape[1]), np.nan), mx.nd.full((hi - lo, w.shape[1]), np.nan)
            checkpoint.load_centers_into(folder, lo, gw, gm, block_bytes=1 * KiB)
            gw, gm = gw.asnumpy(), gm.asnumpy()
        np.testing.assert_array_equal(gw, w[lo:hi])
        np.testing.assert_array_equal(gm, m[lo:hi])


def read_bytes_counted():
    """Bytes this process has read through read() so far (Linux /proc/self/io rchar)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
def test_a_shard_reads_only_the_bytes_of_its_own_rows(tmp_path):
    folder, w, m = two_rank_folder(tmp_path, n=20000, d=64, split=12000)   # 4.9 MiB of centers per kind
    lo, hi = 11000, 13000   # 1000 rows from each file
    gw, gm = mx.nd.zeros((hi - lo, 64)), mx.nd.zeros((hi - lo, 64))
    before = read_bytes_counted()
    done = checkpoint.load_centers_into(folder, lo, gw, gm, block_bytes=64 * KiB)
    read = read_bytes_counted() - before
    own = 2 * (hi - lo) * 64 * 4
    assert done.nbytes == own
    assert own <= read < own + 64 * KiB, (read, own)   # plus the four headers and the folder listing
    np.testing.assert_array_equal(gw.asnumpy(), w[lo:hi])
    np.testing.assert_array_equal(gm.asnumpy(), m[lo:hi])


def test_rows_outside_the_shard_are_never_looked_at(tmp_path):
    # a file whose other rows are garbage (NaN) loads the owned rows unchanged
    folder, w, m = two_rank_folder(tmp_path, n=100, d=4, split=60)
    path = folder / checkpoint.center_file(60, 100, "weight")
    garbage = np.load(path)
    garbage[20:] = np.nan
    np.save(path, garbage)
    gw, gm = checkpoint.load_centers(folder, 50, 30, 4)
    np.testing.assert_array_equal(gw, w[50:80])
    np.testing.assert_array_equal(gm, m[50:80])


def test_files_that_do_not_fit_are_named_in_one_line(tmp_path):
    folder, w, _ = two_rank_folder(tmp_path, n=100, d=4, split=60)
    path = folder / checkpoint.center_file(60, 100, "weight")
    np.save(path, w[60:90])   # 30 rows in a file named for 40
    with pytest.raises(CheckpointError, match=r"centers-000000060-000000100.weight.npy: holds 30 rows, expected 40"):
        checkpoint.load_centers(folder, 0, 100, 4)
    np.save(path, w[60:].astype(np.float64))
    with pytest.raises(CheckpointError, match=r"weight.npy: holds float64, expected C-ordered float32"):
        checkpoint.load_centers(folder, 0, 100, 4)
    np.save(path, w[60:])
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match=r"weight.npy: ends early \(truncated file\)"):
        checkpoint.load_centers(folder, 0, 100, 4)
    path.write_bytes(b"not an npy file at all")
    with pytest.raises(CheckpointError, match=r"weight.npy: not a readable .npy file"):
        checkpoint.load_centers(folder, 0, 100, 4)
    with pytest.raises(CheckpointError, match=r"dimension 4, the model has 8"):
        checkpoint.load_centers(folder, 0, 60, 8)


def test_a_version_2_npy_header_is_read_too(tmp_path):
    a = rows(30, 5)
    path = tmp_path / "v2.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array(f, a, version=(2, 0))
    got = np.zeros((10, 5), np.float32)
    assert blocks.read_rows(path, 12, 10, 5, got, 0) == 10 * 5 * 4
    np.testing.assert_array_equal(got, a[12:22])


def test_save_verify_and_load_each_log_size_time_and_rate(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pfc_mx.checkpoint")
    folder, _, _ = two_rank_folder(tmp_path)
    checkpoint.check_integrity(folder)
    checkpoint.load_centers_into(folder, 0, mx.nd.zeros((1000, 16)), mx.nd.zeros((1000, 16)))
    rate = r"\d+\.\d\d GiB in \d+\.\d s \(\d+ MiB/s\)"
    assert any(re.fullmatch(r"checkpoint step 2: " + rate, r.getMessage()) for r in caplog.records)
    text = caplog.text
    assert re.search(r"checkpoint step-00000002: verified the sha256 of 5 files, " + rate, text)
    assert re.search(r"checkpoint step-00000002: loaded the centers of classes \[0, 1000\): " + rate, text)



def test_measure_saves_and_loads_a_shard_with_rss_growth_far_below_the_arrays(tmp_path):
    from pfc_mx.cli import measure_checkpoint as measure
    classes, dim = 300000, 128   # weight + momentum: 293 MiB; a host copy of them would grow RSS by as much
    saved, = measure.measure("save", tmp_path, classes, dim)
    loaded, = measure.measure("load", tmp_path, classes, dim)
    assert saved["rows"] == loaded["rows"] == classes and saved["array_bytes"] == 2 * classes * dim * 4
    assert loaded["check_seconds"] > 0 and loaded["load_seconds"] > 0
    for record in (saved, loaded):
        if record["rss_growth"] is not None:
            assert record["rss_growth"] < record["array_bytes"] / 3, record
    w = np.load(tmp_path / "step-00000001" / checkpoint.center_file(0, classes, "weight"), mmap_mode="r")
    assert w.shape == (classes, dim) and 0.005 < float(np.std(w[:1000])) < 0.02   # the random centers, N(0, 0.01)


def test_a_missing_center_file_is_a_checkpoint_error_naming_it(tmp_path):
    folder, _, _ = two_rank_folder(tmp_path, n=100, d=4, split=60)
    (folder / checkpoint.center_file(60, 100, "momentum")).unlink()
    with pytest.raises(CheckpointError, match=r"centers-000000060-000000100.momentum.npy: unreadable \(No such file"):
        checkpoint.load_centers(folder, 0, 100, 4)
    short = np.zeros((20, 4), np.float32)
    with pytest.raises(CheckpointError, match=r"holds 40 rows, rows up to 50 are needed"):
        blocks.read_rows(folder / checkpoint.center_file(60, 100, "weight"), 30, 20, 4, short, 0)
