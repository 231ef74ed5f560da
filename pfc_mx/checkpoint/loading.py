"""Reading checkpoints back: the integrity check, the newest resumable folder, this rank's centers.

    state = check_integrity(folder)          # state.json, after every listed file's sha256 matched
    found = find_resumable(root)             # Resumable(path, state, skipped) or None
    load_centers_into(folder, class_start, pfc.weight, pfc.momentum)   # only this rank's rows, in place
    weight, momentum = load_centers(folder, class_start, num_local, dim)   # the same as new NumPy arrays
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from pfc_mx.checkpoint.blocks import BLOCK_BYTES, Transfer, read_rows
from pfc_mx.checkpoint.layout import STATE, TRAINER_STATES, center_file, center_ranges, step_folders
from pfc_mx.errors import CheckpointError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resumable:
    """A verified checkpoint folder, its state.json, and the newer folders skipped as damaged."""

    path: Path
    state: Dict[str, Any]
    skipped: Tuple[Tuple[Path, str], ...] = ()


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_integrity(folder: Path) -> Dict[str, Any]:
    """Return folder's state.json after checking every listed file's sha256; CheckpointError if not.

    Every byte of every file is read once, in 1 MiB blocks (bounded memory at any size); rank 0
    logs the bytes and the time.
    """
    state_path = folder / STATE
    if not state_path.is_file():
        raise CheckpointError(f"{folder}: no {STATE} (incomplete checkpoint)")
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{state_path}: unreadable ({e})") from None
    began, nbytes = time.perf_counter(), 0
    for name, digest in state.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{folder}: missing file {name}")
        try:
            actual = file_sha256(path)
            nbytes += path.stat().st_size
        except OSError as e:
            raise CheckpointError(f"{path}: unreadable ({e.strerror or e})") from None
        if actual != digest:
            raise CheckpointError(f"{folder}: checksum mismatch in {name} (file damaged)")
    log.info("checkpoint %s: verified the sha256 of %d files, %s", folder.name, len(state.get("files", {})),
             Transfer(nbytes, time.perf_counter() - began).describe())
    return state


def find_resumable(root: Path) -> Optional[Resumable]:
    """The newest checkpoint under root that verifies, or None when there is none.

    A damaged newest checkpoint is skipped with a warning naming it.
    """
    skipped: List[Tuple[Path, str]] = []
    for _, folder in reversed(step_folders(root)):
        try:
            return Resumable(folder, check_integrity(folder), tuple(skipped))
        except CheckpointError as e:
            log.warning("skipping checkpoint: %s; falling back to an older one", e)
            skipped.append((folder, str(e)))
    return None


def load_centers_into(folder: Path, class_start: int, weight: Any, momentum: Any,
                      block_bytes: int = BLOCK_BYTES) -> Transfer:
    """Fill this rank's weight and momentum ((num_local, D) float32, NumPy or MXNet NDArray, in place)
    with classes [class_start, class_start + num_local) from the stored class ranges.

    Reads only the byte ranges of those rows (a resume on another world size reads no other
    rank's classes) and needs one block of host memory beyond the destinations. Returns the
    bytes read and the time; CheckpointError when a row is not stored or a file does not fit.
    """
    num_local, dim = (int(s) for s in weight.shape)
    if tuple(momentum.shape) != (num_local, dim):
        raise ValueError(f"weight {tuple(weight.shape)} and momentum {tuple(momentum.shape)} differ in shape")
    end = class_start + num_local
    began = time.perf_counter()
    covered = nbytes = 0
    for s, e in center_ranges(folder):
        lo, hi = max(s, class_start), min(e, end)
        if lo >= hi:
            continue
        for kind, dest in (("weight", weight), ("momentum", momentum)):
            nbytes += read_rows(folder / center_file(s, e, kind), lo - s, hi - lo, dim, dest, lo - class_start,
                                block_bytes, rows=e - s)
        covered += hi - lo
    if covered != num_local:
        raise CheckpointError(f"{folder}: class range [{class_start}, {end}) is not fully stored "
                              f"({covered} of {num_local} rows found)")
    done = Transfer(nbytes, time.perf_counter() - began)
    log.info("checkpoint %s: loaded the centers of classes [%d, %d): %s", folder.name, class_start, end,
             done.describe())
    return done


def load_centers(folder: Path, class_start: int, num_local: int, dim: int) -> Tuple[np.ndarray, np.ndarray]:
    """This rank's (num_local, dim) weight and momentum as new NumPy arrays (see load_centers_into)."""
    weight = np.empty((num_local, dim), np.float32)
    momentum = np.empty((num_local, dim), np.float32)
    load_centers_into(folder, class_start, weight, momentum)
    return weight, momentum


def load_trainer_states(folder: Path, trainer: Any) -> None:
    path = folder / TRAINER_STATES
    if path.is_file():
        trainer.load_states(str(path))
