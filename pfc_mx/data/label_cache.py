"""What opening a rec computes once and keeps: its parsed index, and labels a header scan found.

Usage::

    keys, offsets, digest = load_index(idx) or (None, None, None)   # offsets memory-mapped (shared)
    store_index(idx, keys, offsets, digest)                            # after read_index
    key = cache_key(rec, digest)          # the rec's identity: size, mtime, a digest of the index's bytes
    raw = load(key, num_images)           # (num_images,) float32 header labels, or None
    store(key, raw)                       # after a scan; a failure only warns

The parsed index is keyed by the .idx file's device, inode, size and modification time, so a
rewritten index is parsed again; its offsets are memory-mapped read-only, so the ranks and
loader workers of one host share one copy in the page cache.

The cache lives in our own folder, ${PFC_MX_CACHE:-~/.cache/pfc_mx}/labels (XDG_CACHE_HOME
honoured; $PFC_MX_DATA_CACHE names another), never beside the user's data. A rewritten rec or index (other size, mtime or
index bytes) has another key, so its stale labels are never used. One file of 4 bytes per
image (the labels are float32 in the records, so nothing is lost).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from pfc_mx.atomic import atomic_path
from pfc_mx.cache import cache_root
from pfc_mx.data.record_format import KeyRange, Keys

log = logging.getLogger(__name__)

_VERSION = b"pfc_mx-labels-1"  # change when the stored content changes


def cache_dir() -> Path:
    """$PFC_MX_DATA_CACHE, else $PFC_MX_CACHE/labels, else ~/.cache/pfc_mx/labels (XDG_CACHE_HOME honoured)."""
    if os.environ.get("PFC_MX_DATA_CACHE"):
        return Path(os.environ["PFC_MX_DATA_CACHE"])
    return cache_root() / "labels"


def _save(path: Path, arr: np.ndarray) -> None:
    """np.save into path atomically (a reader sees the old file or the whole new one)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)


def _index_key(idx: Path) -> str:
    st = idx.stat()
    return hashlib.blake2b(_VERSION + f"index:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}".encode(),
                           digest_size=16).hexdigest()


def load_index(idx: Path) -> Optional[Tuple[Keys, np.ndarray, str]]:
    """(keys, offsets read-only memory map, index digest) of a parse kept by store_index, or None."""
    base = cache_dir() / f"index-{_index_key(idx)}"
    try:
        meta = json.loads(base.with_suffix(".json").read_text())
        offsets = np.load(base.with_suffix(".offsets.npy"), mmap_mode="r", allow_pickle=False)
        keys = (KeyRange(meta["first"], meta["first"] + offsets.size) if meta["consecutive"] else
                np.load(base.with_suffix(".keys.npy"), allow_pickle=False))
    except (OSError, ValueError, KeyError):
        return None
    if offsets.dtype != np.int64 or offsets.ndim != 1 or keys.size != offsets.size:
        return None
    return keys, offsets, meta["digest"]


def store_index(idx: Path, keys: Keys, offsets: np.ndarray, digest: str) -> None:
    """Keep a parse of idx for load_index (atomically; a failure only warns)."""
    base = cache_dir() / f"index-{_index_key(idx)}"
    consecutive = isinstance(keys, KeyRange)
    meta = {"first": keys.start if consecutive else None, "consecutive": consecutive, "digest": digest}
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
        for suffix, arr in ((".offsets.npy", offsets), (".keys.npy", None if consecutive else keys)):
            if arr is not None:
                _save(base.with_suffix(suffix), np.ascontiguousarray(arr))
        with atomic_path(base.with_suffix(".json")) as tmp:  # last: its presence means the arrays are whole
            tmp.write_text(json.dumps(meta))
    except OSError as e:
        log.warning("could not keep the parsed index in %s (%s): the next open parses it again", base.parent, e)


def index_digest():
    """The hash object read_index feeds with the index's bytes (record_format.read_index(digest=...))."""
    return hashlib.blake2b(digest_size=16)


def cache_key(rec: Path, index_digest_hex: str) -> str:
    """Hex key of a rec: its size and mtime and its index's digest (index_digest, fed by read_index)."""
    st = rec.stat()
    return hashlib.blake2b(_VERSION + f"{st.st_size}:{st.st_mtime_ns}:{index_digest_hex}".encode(),
                           digest_size=16).hexdigest()


def path_for(key: str) -> Path:
    return cache_dir() / f"{key}.npy"


def load(key: str, num_images: int) -> Optional[np.ndarray]:
    """The cached (num_images,) float32 labels of `key`, or None when absent or unreadable."""
    path = path_for(key)
    try:
        raw = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if raw.dtype != np.float32 or raw.shape != (num_images,):
        log.warning("%s: cached labels have the wrong shape; scanning the headers again", path)
        return None
    return raw


def store(key: str, raw: np.ndarray) -> Optional[Path]:
    """Save labels under `key` (atomically); return the path, or None with a warning when it cannot."""
    path = path_for(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _save(path, raw.astype(np.float32, copy=False))
    except OSError as e:
        log.warning("could not cache the labels in %s (%s): the next open scans the headers again", path, e)
        return None
    return path
