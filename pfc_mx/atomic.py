"""Atomic file writes: a reader sees the old file or the whole new one, never a part of it.

    write_atomic(folder / "latest", "step-00000006\\n")   # text or bytes, on disk before the rename
    with atomic_path(out / "model.onnx") as tmp:          # a writer that wants a file name
        onnx.save(model, str(tmp))                        # renamed onto the target when the block ends

The temporary file sits in the target's folder (a rename is atomic only within one
file system). When the write fails, or the block raises, the target is untouched
and the temporary file is removed. Every module that replaces a file in place
goes through here.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

TMP_SUFFIX = ".tmp"


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def write_atomic(path: Union[str, Path], data: Union[str, bytes]) -> None:
    """Write data to path through `<name>.tmp` beside it, fsynced before the rename.

    The temporary name is fixed, so a crash leaves at most one stray `<name>.tmp` (the
    checkpoint code removes `latest.tmp` at resume); two writers of one path must not race.
    """
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextmanager
def atomic_path(path: Union[str, Path], mode: int = 0o666) -> Iterator[Path]:
    """Yield a unique temporary path beside `path`; rename it onto `path` when the block succeeds.

    For writers that take a file name (a compiler, onnx.save, pickle into open()). The file
    exists (empty) when the block starts and gets `mode` less the umask, as open() would give
    it. Several processes may write the same target at once: the last rename wins, whole.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, mode & ~_umask())  # mkstemp makes it private
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            _remove(tmp)
