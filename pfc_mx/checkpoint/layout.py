"""Where a checkpoint's files are, and which step folder a path given by a user means.

    folder = resolve("runs/demo")            # a run folder, its checkpoints/, a step folder or `latest`
    prefix = folder / BACKBONE_PREFIX        # mx.model.load_checkpoint(str(prefix), BACKBONE_EPOCH)

Every name of the layout (pfc_mx/checkpoint/__init__.py draws it) is defined here; code that
reads or writes a checkpoint uses these names, not its own strings.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import List, Optional, Tuple, Union

from pfc_mx.atomic import write_atomic
from pfc_mx.errors import CheckpointError

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"      # the folder of a run's output.dir that holds the step folders
LATEST = "latest"                # a text file in it: the name of the newest complete step folder
SET_ASIDE = "set-aside"          # step folders newer than where a run continued (never deleted)
STATE = "state.json"             # in a step folder: step, epoch, ..., sha256 of every file
BACKBONE_PREFIX = "backbone"     # MXNet's legacy checkpoint pair, epoch 0:
BACKBONE_EPOCH = 0
BACKBONE_SYMBOL = f"{BACKBONE_PREFIX}-symbol.json"
BACKBONE_PARAMS = f"{BACKBONE_PREFIX}-{BACKBONE_EPOCH:04d}.params"
TRAINER_STATES = f"{BACKBONE_PREFIX}-trainer.states"
STEP_DIR = re.compile(r"^step-(\d{8})$")
TMP_DIR = re.compile(r"^\.step-(\d{8})\.tmp$")
CENTER_WEIGHTS = re.compile(r"^centers-(\d+)-(\d+)\.weight\.npy$")  # the weight file of classes [start, end)


def step_name(step: int) -> str:
    """`step-XXXXXXXX`: the folder of a complete checkpoint."""
    return f"step-{step:08d}"


def tmp_name(step: int) -> str:
    """`.step-XXXXXXXX.tmp`: the folder of that checkpoint while it is being written."""
    return f".step-{step:08d}.tmp"


def center_file(start: int, end: int, kind: str) -> str:
    """`centers-SSSSSSSSS-EEEEEEEEE.<kind>.npy`: the centers' "weight" or "momentum" of classes [start, end)."""
    return f"centers-{start:09d}-{end:09d}.{kind}.npy"


def center_ranges(folder: Path) -> List[Tuple[int, int]]:
    """The class ranges [start, end) whose center weights folder holds, in name order."""
    found = (CENTER_WEIGHTS.match(p.name) for p in sorted(folder.iterdir()))
    return [(int(m.group(1)), int(m.group(2))) for m in found if m]


def step_folders(root: Path) -> List[Tuple[int, Path]]:
    """(step, folder) of the `step-XXXXXXXX` folders under root, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in root.iterdir() for m in [STEP_DIR.match(p.name)] if m)


def point_latest(root: Path, folder: Optional[Path]) -> None:
    """Name `folder` in `latest`, or remove `latest` for None (at resume, after folders were set
    aside); best effort."""
    latest = Path(root) / LATEST
    try:
        if folder is not None:
            write_atomic(latest, Path(folder).name + "\n")
        elif latest.exists():
            latest.unlink()
    except OSError as e:
        log.warning("could not update %s: %s", latest, e)


def resolve(path: Union[str, Path]) -> Path:
    """The step folder that path means; CheckpointError, one line, when there is none.

    path: a step folder (it holds BACKBONE_SYMBOL); a checkpoints folder (through its `latest`);
    a run folder (through `latest` or `checkpoints/latest`); or a `latest` file. The folder is
    not checked beyond holding BACKBONE_SYMBOL (check_integrity does that).
    """
    path = Path(path)
    if path.is_dir():
        if (path / BACKBONE_SYMBOL).is_file():
            return path
        for pointer in (path / LATEST, path / CHECKPOINTS / LATEST):
            if pointer.exists():
                return resolve(pointer)
        raise CheckpointError(f"{path}: no {BACKBONE_SYMBOL}, {LATEST} or {CHECKPOINTS}/{LATEST} in this directory")
    if path.is_file() and path.name == LATEST:
        name = path.read_text().strip()
        if not name:
            raise CheckpointError(f"{path}: empty checkpoint pointer")
        target = path.parent / name
        if not (target / BACKBONE_SYMBOL).is_file():
            raise CheckpointError(f"{path}: points at {target}, which has no {BACKBONE_SYMBOL}")
        return target
    raise CheckpointError(f"{path}: not a checkpoint (expected a run, checkpoints or step folder, or `{LATEST}`)")
