"""Checkpoints: atomic save, keep the newest N, verified resume on any number of ranks.

Layout (shared/DESIGN.md §5)::

    <output>/checkpoints/
        step-00001000/
            backbone-symbol.json, backbone-0000.params   legacy names; mx.model.load_checkpoint works
            backbone-trainer.states                     the backbone optimizer (SGD momentum)
            centers-000000000-000046716.weight.npy      class centers of classes [start, end)
            centers-000000000-000046716.momentum.npy    their momentum
            state.json                                  step, epoch, lr, seeds, world size, ..., sha256 of every file
        latest                                          name of the newest complete checkpoint

Every rank writes its own center range into `.step-XXXXXXXX.tmp/`; rank 0 then
writes state.json with the checksums of all files and renames the folder. A
folder without state.json, or whose checksums do not match, is never used:
`find_resumable` falls back to the previous complete checkpoint and says so.
A save that fails on any rank (disk full, unwritable folder) raises
CheckpointError on every rank and leaves the previous checkpoint and `latest`
as they were; the folder of a save that was killed keeps its temporary name
and is removed by `remove_incomplete` on the next resume. Step folders newer
than the step a run starts from (damaged ones skipped by the fallback, or a
later history when a run restarts from an older point) are moved into
`set-aside/` by `set_aside_newer`, never deleted; pruning only ever removes
folders older than the one just saved.
Centers are stored by global class range, so a run saved on W ranks resumes on
any other number of ranks. The output folder must be visible to every rank
(one host, or a shared file system).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from pfc_mx import dist, strict_json
from pfc_mx.atomic import write_atomic
from pfc_mx.errors import CheckpointError, first_line

log = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step-(\d{8})$")
BACKBONE_PREFIX = "backbone"
TRAINER_STATES = "backbone-trainer.states"


INJECT_SAVE_STALL = "PFC_MX_INJECT_SAVE_STALL"
TMP_DIR = re.compile(r"^\.step-(\d{8})\.tmp$")


@dataclass(frozen=True)
class Resumable:
    """A verified checkpoint folder, its state.json, and the newer folders skipped as damaged."""

    path: Path
    state: Dict[str, Any]
    skipped: Tuple[Tuple[Path, str], ...] = ()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _reason(error: BaseException, root: Path) -> str:
    """One line for a failed write, with the free space left under root (a full disk shows as ~0 MiB)."""
    try:
        free = f"; {shutil.disk_usage(root).free / 2**20:.1f} MiB free in {root}"
    except OSError:
        free = ""
    return first_line(error) + free


def _injected_stall(step: int) -> None:
    """Test hook: PFC_MX_INJECT_SAVE_STALL=<step> parks this rank inside the save of that step, after
    its files are written and before state.json, so a test can kill the job in the middle of a save."""
    if os.environ.get(INJECT_SAVE_STALL) == str(step):
        log.warning("%s=%d: stalling inside the save (test hook)", INJECT_SAVE_STALL, step)
        time.sleep(3600)


def center_file_stem(start: int, end: int) -> str:
    return f"centers-{start:09d}-{end:09d}"


def _save_rank_files(folder: Path, net: Any, trainer: Any, save_backbone: Callable[[Any, str], None],
                     centers: Tuple[int, np.ndarray, np.ndarray]) -> Dict[str, str]:
    """Write this rank's share of a checkpoint; return {file name: sha256}."""
    written: List[Path] = []
    start, weight, momentum = centers
    if len(weight):
        stem = center_file_stem(start, start + len(weight))
        for kind, arr in (("weight", weight), ("momentum", momentum)):
            p = folder / f"{stem}.{kind}.npy"
            np.save(p, arr)
            written.append(p)
    if dist.rank() == 0:
        save_backbone(net, str(folder / BACKBONE_PREFIX))
        trainer.save_states(str(folder / TRAINER_STATES))
        written += sorted(folder.glob(f"{BACKBONE_PREFIX}-*"))
    return {p.name: _sha256(p) for p in written}


def save(root: Path, step: int, state: Dict[str, Any], net: Any, trainer: Any,
         centers: Tuple[int, np.ndarray, np.ndarray], keep: int,
         save_backbone: Callable[[Any, str], None]) -> Path:
    """Collective: every rank calls it at the same step. Returns the completed folder.

    centers: (class_start, weight (num_local, D), momentum (num_local, D)) of this rank.
    Raises CheckpointError on every rank when any rank fails to write; the previous
    checkpoint and `latest` are then left as they were.
    """
    root = Path(root)
    final = root / f"step-{step:08d}"
    tmp = root / f".step-{step:08d}.tmp"
    error = ""
    if dist.rank() == 0:
        try:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        except OSError as e:
            error = f"cannot create {tmp}: {e}"
    error = dist.broadcast_object(error, root=0)
    sums: Dict[str, str] = {}
    if not error:
        try:
            sums = _save_rank_files(tmp, net, trainer, save_backbone, centers)
        except Exception as e:  # OSError, or MXNetError from MXNet's own writer: every rank must hear of it
            error = f"rank {dist.rank()} could not write checkpoint {final.name}: {_reason(e, root)}"
        _injected_stall(step)
    results = dist.allgather_object((error, sums))
    errors = [e for e, _ in results if e]
    if not errors and dist.rank() == 0:
        files: Dict[str, str] = {}
        for _, s in results:
            files.update(s)
        try:
            write_atomic(tmp / "state.json", strict_json.dumps({**state, "files": files}, indent=1, sort_keys=True))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            write_atomic(root / "latest", final.name + "\n")
            _prune(root, step, keep)
        except Exception as e:
            errors.append(f"could not complete checkpoint {final.name}: {_reason(e, root)}")
    errors = dist.broadcast_object(errors, root=0)
    if errors:
        if dist.rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(errors[0] + " (the previous checkpoint is intact)")
    return final


def step_folders(root: Path) -> List[Tuple[int, Path]]:
    """(step, folder) of the `step-XXXXXXXX` folders under root, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in root.iterdir() for m in [STEP_DIR.match(p.name)] if m)


def _prune(root: Path, step: int, keep: int) -> None:
    """Keep the newest `keep` folders up to `step` (the one just saved is always among them)."""
    done = [p for s, p in step_folders(root) if s <= step]
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def set_aside_newer(root: Path, step: int) -> List[str]:
    """Move step folders newer than `step` into `root/set-aside/` (a suffix keeps names unique).

    Called at resume, by rank 0 only: those folders are damaged ones the fallback skipped, or
    belong to a later history than the step this run continues from; resume `auto` must never
    pick them, and pruning must not count them. Returns the names moved.
    """
    root = Path(root)
    moved = []
    for s, folder in step_folders(root):
        if s <= step:
            continue
        target = root / "set-aside" / folder.name
        n = 1
        while target.exists():
            target, n = root / "set-aside" / f"{folder.name}.{n}", n + 1
        target.parent.mkdir(exist_ok=True)
        os.replace(folder, target)
        moved.append(folder.name)
        log.warning("moved %s to %s: it is newer than step %d, where this run continues", folder, target, step)
    return moved


def check_integrity(folder: Path) -> Dict[str, Any]:
    """Return folder's state.json after checking every listed file's sha256; CheckpointError if not."""
    state_path = folder / "state.json"
    if not state_path.is_file():
        raise CheckpointError(f"{folder}: no state.json (incomplete checkpoint)")
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{state_path}: unreadable ({e})") from None
    for name, digest in state.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{folder}: missing file {name}")
        try:
            actual = _sha256(path)
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


def remove_incomplete(root: Path) -> List[str]:
    """Remove the temporary folders of saves that were interrupted (and a stray `latest.tmp`).

    Call it only when no save is running (at resume). Best effort: a folder that cannot be
    removed is reported and left; it is never used. Returns the names removed.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    removed = []
    for p in sorted(root.iterdir()):
        if not (TMP_DIR.match(p.name) or p.name == "latest.tmp"):
            continue
        try:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            removed.append(p.name)
            log.warning("removed %s: a checkpoint interrupted while being written", p)
        except OSError as e:
            log.warning("could not remove the interrupted checkpoint %s: %s", p, e)
    return removed


def point_latest(root: Path, folder: Optional[Path]) -> None:
    """Name `folder` in `latest`, or remove `latest` for None (at resume, after folders were set
    aside); best effort."""
    latest = Path(root) / "latest"
    try:
        if folder is not None:
            write_atomic(latest, Path(folder).name + "\n")
        elif latest.exists():
            latest.unlink()
    except OSError as e:
        log.warning("could not update %s: %s", latest, e)


def load_centers(folder: Path, class_start: int, num_local: int, dim: int) -> Tuple[np.ndarray, np.ndarray]:
    """Assemble this rank's (num_local, dim) weight and momentum from the stored class ranges."""
    weight = np.empty((num_local, dim), np.float32)
    momentum = np.empty((num_local, dim), np.float32)
    end = class_start + num_local
    covered = 0
    for w_path in sorted(folder.glob("centers-*.weight.npy")):
        _, s, e = w_path.name.split(".")[0].split("-")
        s, e = int(s), int(e)
        lo, hi = max(s, class_start), min(e, end)
        if lo >= hi:
            continue
        w = np.load(w_path, mmap_mode="r")
        m = np.load(w_path.with_name(w_path.name.replace(".weight.", ".momentum.")), mmap_mode="r")
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

