"""The labels of a flat-layout rec (no identity records), kept after its one header scan.

Usage::

    key = cache_key(rec, idx)             # the rec's identity: sizes, mtime, a digest of the index
    raw = load(key, num_images)           # (num_images,) float32 header labels, or None
    store(key, raw)                       # after a scan; a failure only warns

The cache lives in our own folder, ${PFC_MX_CACHE:-~/.cache/pfc_mx}/labels (XDG_CACHE_HOME
honoured), never beside the user's data. A rewritten rec or index (other size, mtime or
index bytes) has another key, so its stale labels are never used. One file of 4 bytes per
image (the labels are float32 in the records, so nothing is lost).
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np

from pfc_mx.atomic import atomic_path

log = logging.getLogger(__name__)

_VERSION = b"pfc_mx-labels-1"  # change when the stored content changes


def cache_dir() -> Path:
    """$PFC_MX_CACHE/labels, else ~/.cache/pfc_mx/labels (XDG_CACHE_HOME honoured)."""
    root = os.environ.get("PFC_MX_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pfc_mx"
    return Path(root) / "labels"


def cache_key(rec: Path, idx: Path, block: int = 1 << 24) -> str:
    """Hex digest of the rec's size and mtime and the index's bytes."""
    h = hashlib.blake2b(_VERSION, digest_size=16)
    st = rec.stat()
    h.update(f"{st.st_size}:{st.st_mtime_ns}:".encode())
    with open(idx, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


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
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, raw.astype(np.float32, copy=False))
    except OSError as e:
        log.warning("could not cache the labels in %s (%s): the next open scans the headers again", path, e)
        return None
    return path
