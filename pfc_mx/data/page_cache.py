"""How much of a file the kernel's page cache holds, and dropping it: bytes read by a cold open.

Usage::

    evict(rec)                      # fsync, then drop the file's clean pages (no root needed)
    before = resident_bytes(rec)    # ~0 after evict
    RecordDataset(rec)
    read = resident_bytes(rec) - before   # bytes the open brought in (read-ahead included)

Linux only (posix_fadvise, mincore). `resident_bytes` returns None where mincore is not
available; `evict` returns False when pages stay resident (e.g. a tmpfs).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from pathlib import Path
from typing import Optional

import numpy as np

_PAGE = mmap.PAGESIZE


def evict(path: "str | os.PathLike") -> bool:
    """Drop the file's pages from the page cache; True when at most 1 % of them remain."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    left = resident_bytes(path)
    return left is not None and left <= 0.01 * max(Path(path).stat().st_size, 1)


def resident_bytes(path: "str | os.PathLike") -> Optional[int]:
    """Bytes of the file now in the page cache (whole pages), or None when it cannot be told."""
    size = Path(path).stat().st_size
    if size == 0:
        return 0
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            return None
        try:
            pages = (size + _PAGE - 1) // _PAGE
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(ctypes.c_void_p(addr), size, vec) != 0:
                return None
            return int((np.frombuffer(vec, np.uint8) & 1).sum()) * _PAGE
        finally:
            libc.munmap(ctypes.c_void_p(addr), size)
    finally:
        os.close(fd)

