"""Reading checkpoints back: the integrity check, the newest resumable folder, this rank's centers.

    state = check_integrity(folder)          # state.json, after every listed file's sha256 matched
    found = find_resumable(root)             # Resumable(path, state, skipped) or None
    weight, momentum = load_centers(folder, class_start, num_local, dim)
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

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
    """Return folder's state.json after checking every listed file's sha256; CheckpointError if not."""
    state_path = folder / STATE
    if not state_path.is_file():
        raise CheckpointError(f"{folder}: no {STATE} (incomplete checkpoint)")
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{state_path}: unreadable ({e})") from None
    for name, digest in state.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{folder}: missing file {name}")
        try:
            actual = file_sha256(path)
        except OSError as e:
            raise CheckpointError(f"{path}: unreadable ({e.strerror or e})") from None
        if actual != digest:
            raise CheckpointError(f"{folder}: checksum mismatch in {name} (file damaged)")
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


def load_centers(folder: Path, class_start: int, num_local: int, dim: int) -> Tuple[np.ndarray, np.ndarray]:
    """Assemble this rank's (num_local, dim) weight and momentum from the stored class ranges."""
    weight = np.empty((num_local, dim), np.float32)
    momentum = np.empty((num_local, dim), np.float32)
    end = class_start + num_local
    covered = 0
    for s, e in center_ranges(folder):
        lo, hi = max(s, class_start), min(e, end)
        if lo >= hi:
            continue
        w_path = folder / center_file(s, e, "weight")
        w = np.load(w_path, mmap_mode="r")
        m = np.load(folder / center_file(s, e, "momentum"), mmap_mode="r")
        if w.shape[1] != dim:
            raise CheckpointError(f"{w_path}: centers have dimension {w.shape[1]}, the model has {dim}")
        weight[lo - class_start:hi - class_start] = w[lo - s:hi - s]
        momentum[lo - class_start:hi - class_start] = m[lo - s:hi - s]
        covered += hi - lo
    if covered != num_local:
        raise CheckpointError(f"{folder}: class range [{class_start}, {end}) is not fully stored "
                              f"({covered} of {num_local} rows found)")
    return weight, momentum


def load_trainer_states(folder: Path, trainer: Any) -> None:
    path = folder / TRAINER_STATES
    if path.is_file():
        trainer.load_states(str(path))
