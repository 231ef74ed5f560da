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
import secrets
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


def _create_unique(folder: Path, name: str, mode: int) -> Path:
    """Create an empty `.<name>.<random>.tmp` in folder with `mode` (the kernel applies the umask).

    O_EXCL makes the name ours; the umask is never read or changed, so other threads are unaffected.
    """
    for _ in range(100):
        tmp = folder / f".{name}.{secrets.token_hex(4)}{TMP_SUFFIX}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {name} in {folder}")


@contextmanager
def atomic_path(path: Union[str, Path], mode: int = 0o666) -> Iterator[Path]:
    """Yield a unique temporary path beside `path`; rename it onto `path` when the block succeeds.

    For writers that take a file name (a compiler, onnx.save, pickle into open()). The file
    exists (empty) when the block starts, created with `mode` less the umask, as open() would
    give it (a writer that replaces the file instead of writing into it sets its own mode).
    Several processes may write the same target at once: the last rename wins, whole.
    """
    path = Path(path)
    tmp = _create_unique(path.parent, path.name, mode)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            _remove(tmp)
