"""Resume policy: which checkpoint a run continues from, whether its config may, and loading it.

`resume` is collective: rank 0 chooses and verifies the checkpoint (output.resume: `auto`
takes the newest one that verifies, `none` starts fresh, anything else is a folder) and
compares the config stored in it with the new one; every rank then loads its part. Changes
that alter the run (data, classes, model, loss, sampling, schedule, seed) stop it with one
line listing them unless output.allow_changes is true; the others (output, evaluation,
loader workers, per-rank batch, kernels) are logged. The world size is not part of the config:
progress is counted in images (pfc_mx.train.progress), so any number of ranks may continue.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from mxnet import gluon

from pfc_mx import checkpoint, dist
from pfc_mx.config import Config
from pfc_mx.errors import ConfigError
from pfc_mx.head import PartialFC
from pfc_mx.train import faults
from pfc_mx.train.progress import Position
from symbols.legacy import load_backbone

log = logging.getLogger("pfc_mx.train")

# config keys (section or section.key) whose change does not alter what the run computes
SAFE_CHANGES = ("output", "eval", "model.pretrained", "model.init", "data.num_workers", "data.max_corrupt_fraction",
                "data.batch_size", "partial_fc.kernels", "partial_fc.centers_on", "optim.skip_nonfinite")


def _flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    flat: Dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def config_changes(stored: Dict[str, Any], new: Dict[str, Any]) -> Tuple[List[str], List[str]]:
    """(safe, altering) differences between two config trees, each as 'key: old -> new'. A key
    that the stored tree lacks (written by a version without it) stands for its default."""
    old_flat, new_flat = {**_flatten(Config().to_dict()), **_flatten(stored)}, _flatten(new)
    safe: List[str] = []
    altering: List[str] = []
    for key in sorted(set(old_flat) | set(new_flat)):
        before, after = old_flat.get(key, "(unset)"), new_flat.get(key, "(unset)")
        if before == after:
            continue
        text = f"{key}: {before!r} -> {after!r}"
        is_safe = any(key == s or key.startswith(s + ".") for s in SAFE_CHANGES)
        (safe if is_safe else altering).append(text)
    return safe, altering


def check_config(cfg: Config, state: Dict[str, Any], folder: Path, num_classes: int) -> None:
    """Compare the config stored in a checkpoint's state with cfg: log safe changes, refuse the
    others (ConfigError, one line) unless output.allow_changes; shapes that cannot load always stop."""
    for key, have in (("num_classes", num_classes), ("embedding_size", cfg.model.embedding_size),
                      ("model", cfg.model.name)):
        if state.get(key) != have:
            raise ConfigError(f"cannot resume from {folder}: it has {key} = {state.get(key)!r}, "
                              f"the config has {have!r}")
    stored = state.get("config")
    if stored is None:
        log.warning("%s stores no config (saved by an older version): the config cannot be compared", folder)
        return
    safe, altering = config_changes(stored, cfg.to_dict())
    if safe:
        log.info("config changes since %s (safe): %s", folder.name, "; ".join(safe))
    if altering and not cfg.output.allow_changes:
        raise ConfigError(f"cannot resume from {folder}: the config changes the run ({'; '.join(altering)}); "
                          "restore them, start a new output.dir, or pass --set output.allow_changes=true")
    if altering:
        log.warning("config changes since %s that alter the run, allowed by output.allow_changes: %s",
                    folder.name, "; ".join(altering))


def resume(cfg: Config, out: Path, net: gluon.HybridBlock, trainer: gluon.Trainer, pfc: PartialFC,
           num_classes: int) -> Tuple[Dict[str, Any], Optional[Path]]:
    """Load the checkpoint output.resume names: (its state, its folder); ({}, None) for a fresh start.

    Rank 0 chooses and verifies the checkpoint (see choose_checkpoint); every rank then loads
    its part. An error on any rank stops every rank.
    """
    choice: Tuple[str, Dict[str, Any]] = ("", {})
    error: Optional[BaseException] = None
    if dist.rank() == 0:
        try:
            choice = choose_checkpoint(cfg, out / checkpoint.CHECKPOINTS, num_classes)
        except Exception as e:  # raised on every rank below
            error = e
    faults.raise_if_any(error)
    path, state = dist.broadcast_object(choice, root=0)
    if not path:
        return {}, None
    folder = Path(path)
    try:
        load(folder, cfg, net, trainer, pfc)
    except Exception as e:
        error = e
    faults.raise_if_any(error)
    pfc.set_step(int(state["step"]))
    return state, folder


def choose_checkpoint(cfg: Config, root: Path, num_classes: int) -> Tuple[str, Dict[str, Any]]:
    """Rank 0's part of resume: (folder, its verified state), or ('', {}) for a fresh start.

    `auto` removes folders of interrupted saves and takes the newest checkpoint that verifies,
    saying which newer ones it skipped and why; `none` starts fresh; anything else is a folder.
    Step folders newer than the chosen step (damaged ones, or a later history) are moved into
    checkpoints/set-aside/, so that `auto` never picks them later and pruning never counts them.
    """
    folder: Optional[Path] = None
    state: Dict[str, Any] = {}
    if cfg.output.resume == "auto":
        checkpoint.remove_incomplete(root)
        found = checkpoint.find_resumable(root)
        if found is not None:
            folder, state = found.path, found.state
            if found.skipped:
                log.warning("falling back to %s: newer checkpoint(s) %s did not verify", found.path.name,
                            ", ".join(p.name for p, _ in found.skipped))
        elif checkpoint.step_folders(root):
            log.warning("no checkpoint in %s verifies: starting from step 0", root)
    elif cfg.output.resume != "none":
        folder = Path(cfg.output.resume)
        state = checkpoint.check_integrity(folder)
    if folder is not None:
        check_config(cfg, state, folder, num_classes)
    if checkpoint.set_aside_newer(root, int(state.get("step", 0))):
        remaining = checkpoint.step_folders(root)
        checkpoint.point_latest(root, remaining[-1][1] if remaining else None)
    return (str(folder) if folder else "", state)


def load(folder: Path, cfg: Config, net: gluon.HybridBlock, trainer: gluon.Trainer, pfc: PartialFC) -> None:
    """This rank's part of resume: backbone, backbone optimizer state and its center rows from folder."""
    loaded = load_backbone(str(folder / checkpoint.BACKBONE_PREFIX), cfg.model.name,
                           embedding_size=cfg.model.embedding_size, dropout=cfg.model.dropout,
                           bn_mom=cfg.model.bn_mom, bn_eps=cfg.model.bn_eps)
    # both nets come from get_model with the same options: their parameters line up in order
    for p, q in zip(net.collect_params().values(), loaded.collect_params().values()):
        p.set_data(q.data())
    checkpoint.load_trainer_states(folder, trainer)
    checkpoint.load_centers_into(folder, pfc.class_start, pfc.weight, pfc.momentum)  # only this rank's rows


def describe(folder: Path, state: Dict[str, Any], start: Position, base_batch: int, global_batch: int,
             steps_left: int, lr: float) -> str:
    """The log line of a resume: where the run stands, what changed (world size, global batch), what is left."""
    saved_world = state.get("world_size")
    change = ""
    if base_batch != global_batch or saved_world != dist.size():
        change = (f"; saved on {saved_world} rank(s), now {dist.size()}: global batch {global_batch} "
                  f"(the run's unit is {base_batch} images a step)")
    return (f"resumed from {folder} at step {int(state['step'])} ({start.images} images seen, epoch {start.epoch}, "
            f"image {start.offset} of its order){change}; {steps_left} steps left, lr {lr:.5g}")
