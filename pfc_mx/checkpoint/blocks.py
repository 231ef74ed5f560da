"""Center shards as .npy files, written and read in row blocks (bounded host memory at 10 M classes).

    digest, nbytes = write_npy(path, weight)                 # NumPy or MXNet NDArray (n, D) float32
    read_rows(path, first, count, dim, weight_nd, at)        # rows [first, +count) into weight_nd[at:]

write_npy copies a block of rows to the host, hashes it and writes it: one pass, no
re-reading for the sha256 and no full host copy of the array. The file is byte for byte
what np.save writes (header format 1.0, C order), so plain np.load reads it. read_rows
reads only the byte range of the rows asked for, straight into a NumPy destination or
through one block-sized buffer into an NDArray (on any context).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np

from pfc_mx.errors import CheckpointError

BLOCK_BYTES = 32 << 20          # the host buffer of one block of rows
DTYPE = np.dtype("<f4")         # centers and momentum are little-endian float32


@dataclass(frozen=True)
class Transfer:
    """Bytes moved and the seconds it took; rate in bytes per second."""

    nbytes: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.nbytes / self.seconds if self.seconds > 0 else float("inf")

    def describe(self) -> str:
        """`5.1 GiB in 7.3 s (700 MiB/s)`."""
        return f"{self.nbytes / 2**30:.2f} GiB in {self.seconds:.1f} s ({self.rate / 2**20:.0f} MiB/s)"


class _HashingWriter:
    """A file's write() that also feeds the sha256 and counts the bytes."""

    def __init__(self, f: Any) -> None:
        self.f, self.sha, self.nbytes = f, hashlib.sha256(), 0

    def write(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        self.sha.update(view)
        self.f.write(view)
        self.nbytes += view.nbytes


def rows_per_block(dim: int, block_bytes: int = BLOCK_BYTES) -> int:
    """Rows of dim float32 in one block (at least 1)."""
    return max(1, block_bytes // (max(dim, 1) * DTYPE.itemsize))


def _host_rows(array: Any, lo: int, hi: int) -> np.ndarray:
    """Rows [lo, hi) of a NumPy array or an MXNet NDArray as a C-ordered float32 host array (a copy
    of the block only: an NDArray slice on the first axis is a view)."""
    part = array[lo:hi]
    if hasattr(part, "asnumpy"):
        part = part.asnumpy()
    return np.ascontiguousarray(part, dtype=DTYPE)


def write_npy(path: Path, array: Any, block_bytes: int = BLOCK_BYTES) -> Tuple[str, int]:
    """Write array ((n, D) float32, NumPy or NDArray) to path as np.save would; return (sha256 hex, bytes).

    Memory: one block of rows on the host (block_bytes), whatever the array's size.
    """
    n, dim = (int(s) for s in array.shape)
    header = {"descr": np.lib.format.dtype_to_descr(DTYPE), "fortran_order": False, "shape": (n, dim)}
    step = rows_per_block(dim, block_bytes)
    with open(path, "wb") as f:
        out = _HashingWriter(f)
        np.lib.format.write_array_header_1_0(out, header)
        for lo in range(0, n, step):
            out.write(_host_rows(array, lo, min(n, lo + step)))
    return out.sha.hexdigest(), out.nbytes


def read_header(f: Any, path: Path) -> Tuple[Tuple[int, ...], int]:
    """(shape, offset of the data) of an open .npy file of C-ordered little-endian float32."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"format version {version} is not supported")
    except ValueError as e:
        raise CheckpointError(f"{path}: not a readable .npy file ({e})") from None
    if dtype != DTYPE or fortran:
        raise CheckpointError(f"{path}: holds {dtype}{' in Fortran order' if fortran else ''}, "
                              f"expected C-ordered float32")
    return tuple(shape), f.tell()


def read_rows(path: Path, first: int, count: int, dim: int, dest: Any, at: int,
              block_bytes: int = BLOCK_BYTES, rows: Optional[int] = None) -> int:
    """Copy rows [first, first + count) of the (rows, dim) float32 .npy file at path into dest[at:at + count].

    dest: a C-ordered NumPy array (read straight into it) or an MXNet NDArray (through one buffer of
    block_bytes). Only those rows' bytes are read. rows: the row count the file must hold (None: any).
    Returns the bytes read. CheckpointError when the file is not such an array or ends early.
    """
    try:
        with open(path, "rb", buffering=0) as f:
            _read_rows(f, path, first, count, dim, dest, at, block_bytes, rows)
    except OSError as e:
        raise CheckpointError(f"{path}: unreadable ({e.strerror or e})") from None
    return count * dim * DTYPE.itemsize


def _read_rows(f: Any, path: Path, first: int, count: int, dim: int, dest: Any, at: int, block_bytes: int,
               rows: Optional[int]) -> None:
    shape, offset = read_header(f, path)
    if len(shape) != 2 or shape[1] != dim:
        got = shape[1] if len(shape) == 2 else f"shape {shape}"
        raise CheckpointError(f"{path}: centers have dimension {got}, the model has {dim}")
    if rows is not None and shape[0] != rows:
        raise CheckpointError(f"{path}: holds {shape[0]} rows, expected {rows}")
    if first + count > shape[0]:
        raise CheckpointError(f"{path}: holds {shape[0]} rows, rows up to {first + count} are needed")
    direct = isinstance(dest, np.ndarray)
    if direct and (dest.dtype != DTYPE or not dest.flags.c_contiguous):
        raise ValueError("a NumPy destination must be C-ordered float32")
    step = rows_per_block(dim, block_bytes)
    scratch = None if direct else np.empty((min(step, count), dim), DTYPE)
    f.seek(offset + first * dim * DTYPE.itemsize)
    for lo in range(0, count, step):
        k = min(step, count - lo)
        buf = dest[at + lo:at + lo + k] if direct else scratch[:k]
        _read_exactly(f, memoryview(buf).cast("B"), path)
        if not direct:
            dest[at + lo:at + lo + k]._sync_copyfrom(buf)


def _read_exactly(f: Any, view: memoryview, path: Path) -> None:
    got = 0
    while got < view.nbytes:
        n = f.readinto(view[got:])
        if not n:
            raise CheckpointError(f"{path}: ends early (truncated file)")
        got += n
