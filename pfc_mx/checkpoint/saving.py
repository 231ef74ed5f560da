"""Writing checkpoints: the collective save, pruning, and tidying the checkpoints folder at resume.

See pfc_mx/checkpoint/__init__.py for the layout and the guarantees: a save is complete
(state.json with every file's sha256, folder renamed, `latest` updated) or leaves the
previous checkpoint as it was.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

from pfc_mx import dist, strict_json
from pfc_mx.atomic import TMP_SUFFIX, write_atomic
from pfc_mx.checkpoint.blocks import Transfer, write_npy
from pfc_mx.checkpoint.layout import (BACKBONE_PREFIX, LATEST, SET_ASIDE, STATE, TMP_DIR, TRAINER_STATES,
                                      center_file, step_folders, step_name, tmp_name)
from pfc_mx.checkpoint.loading import file_sha256
from pfc_mx.errors import CheckpointError, first_line

log = logging.getLogger(__name__)

INJECT_SAVE_STALL = "PFC_MX_INJECT_SAVE_STALL"


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


def _save_rank_files(folder: Path, net: Any, trainer: Any, save_backbone: Callable[[Any, str], None],
                     centers: Tuple[int, Any, Any]) -> Dict[str, str]:
    """Write this rank's share of a checkpoint; return {file name: sha256}.

    The centers are hashed as they are written (blocks.write_npy); the backbone files, a few
    MB written by MXNet, are hashed after.
    """
    sums: Dict[str, str] = {}
    start, weight, momentum = centers
    if len(weight):
        began, nbytes = time.perf_counter(), 0
        for kind, arr in (("weight", weight), ("momentum", momentum)):
            name = center_file(start, start + len(weight), kind)
            sums[name], size = write_npy(folder / name, arr)
            nbytes += size
        log.debug("rank %d wrote the centers of classes [%d, %d): %s", dist.rank(), start, start + len(weight),
                  Transfer(nbytes, time.perf_counter() - began).describe())
    if dist.rank() == 0:
        save_backbone(net, str(folder / BACKBONE_PREFIX))
        trainer.save_states(str(folder / TRAINER_STATES))
        sums.update((p.name, file_sha256(p)) for p in sorted(folder.glob(f"{BACKBONE_PREFIX}-*")))
    return sums


def save(root: Path, step: int, state: Dict[str, Any], net: Any, trainer: Any,
         centers: Tuple[int, Any, Any], keep: int,
         save_backbone: Callable[[Any, str], None]) -> Path:
    """Collective: every rank calls it at the same step. Returns the completed folder.

    centers: (class_start, weight (num_local, D), momentum (num_local, D)) of this rank, float32
    NumPy arrays or MXNet NDArrays (the head's own arrays: they are copied to the host one block
    of rows at a time). Rank 0 logs the size and time of the whole checkpoint. Raises
    CheckpointError on every rank when any rank fails to write; the previous checkpoint and
    `latest` are then left as they were.
    """
    began = time.perf_counter()
    root = Path(root)
    final = root / step_name(step)
    tmp = root / tmp_name(step)
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
            nbytes = sum((tmp / name).stat().st_size for name in files)
            write_atomic(tmp / STATE, strict_json.dumps({**state, "files": files}, indent=1, sort_keys=True))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            write_atomic(root / LATEST, final.name + "\n")
            _prune(root, step, keep)
            log.info("checkpoint step %d: %s", step, Transfer(nbytes, time.perf_counter() - began).describe())
        except Exception as e:
            errors.append(f"could not complete checkpoint {final.name}: {_reason(e, root)}")
    errors = dist.broadcast_object(errors, root=0)
    if errors:
        if dist.rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(errors[0] + " (the previous checkpoint is intact)")
    return final


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
        target = root / SET_ASIDE / folder.name
        n = 1
        while target.exists():
            target, n = root / SET_ASIDE / f"{folder.name}.{n}", n + 1
        target.parent.mkdir(exist_ok=True)
        os.replace(folder, target)
        moved.append(folder.name)
        log.warning("moved %s to %s: it is newer than step %d, where this run continues", folder, target, step)
    return moved


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
        if not (TMP_DIR.match(p.name) or p.name == LATEST + TMP_SUFFIX):
            continue
        try:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            removed.append(p.name)
            log.warning("removed %s: a checkpoint interrupted while being written", p)
        except OSError as e:
            log.warning("could not remove the interrupted checkpoint %s: %s", p, e)
    return removed
