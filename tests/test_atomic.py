"""pfc_mx.atomic: a target is the old file or the whole new one; no temporary file is left behind."""
from __future__ import annotations

import os

import pytest

from pfc_mx.atomic import atomic_path, write_atomic


def test_write_atomic_replaces_text_and_bytes_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "latest"
    write_atomic(target, "step-00000002\n")
    write_atomic(target, "step-00000004\n")
    assert target.read_text() == "step-00000004\n"
    write_atomic(tmp_path / "blob", b"\x00\xff")
    assert (tmp_path / "blob").read_bytes() == b"\x00\xff"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob", "latest"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "state.json"
    target.write_text("old")
    with pytest.raises(TypeError):
        write_atomic(target, 42)  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_atomic_path_renames_on_success_and_removes_on_error(tmp_path):
    target = tmp_path / "model.onnx"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.exists() and not target.exists()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("parity check failed")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_atomic_path_gives_the_permissions_open_would(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "data.bin") as tmp:
            tmp.write_bytes(b"x")
        with atomic_path(tmp_path / "lib.so", mode=0o755) as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(umask)
    assert (tmp_path / "data.bin").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "lib.so").stat().st_mode & 0o777 == 0o755


def test_atomic_path_never_reads_the_umask_by_setting_it(tmp_path, monkeypatch):
    """os.umask is process-wide: setting it to read it races with files other threads create."""
    def refuse(*_):
        raise AssertionError("atomic_path called os.umask")
    monkeypatch.setattr(os, "umask", refuse)
    with atomic_path(tmp_path / "model.onnx") as tmp:
        assert tmp.exists() and tmp.stat().st_size == 0
        tmp.write_bytes(b"x")
    assert (tmp_path / "model.onnx").read_bytes() == b"x"


def test_atomic_path_creates_the_temporary_with_its_final_mode(tmp_path):
    """The mode is set when the file is made, not by a chmod after the writer is done."""
    umask = os.umask(0o027)
    try:
        with atomic_path(tmp_path / "lib.so", mode=0o755) as tmp:
            seen = tmp.stat().st_mode & 0o777
    finally:
        os.umask(umask)
    assert seen == 0o750
    assert (tmp_path / "lib.so").stat().st_mode & 0o777 == 0o750
