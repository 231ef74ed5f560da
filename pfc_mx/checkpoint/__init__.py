"""Checkpoints: atomic save, keep the newest N, verified resume on any number of ranks.

    folder = checkpoint.save(out / "checkpoints", step, state, net, trainer, centers, keep, save_backbone)
    found = checkpoint.find_resumable(out / "checkpoints")     # newest folder whose checksums match
    folder = checkpoint.resolve("runs/demo")                   # run, checkpoints, step folder or `latest`

Layout (docs/design.md, "Checkpoints"; the names are in layout.py)::

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

At 10 M classes a rank's centers are GiBs: each center file is written in row blocks
of BLOCK_BYTES, hashed as it is written (one pass, one block of host memory), and a
resume reads only the byte ranges of the classes a rank owns, straight into the
head's arrays. Rank 0 logs `checkpoint step N: 5.12 GiB in 7.3 s (700 MiB/s)` for a
save; each rank logs the same for the centers it loads, rank 0 for the check.

Modules: layout (names, step folders, `latest`, resolve), blocks (.npy files in row
blocks), saving (save, prune, set aside, remove interrupted saves), loading (integrity
check, resumable folder, centers, optimizer).
"""
from pfc_mx.checkpoint.layout import (BACKBONE_EPOCH, BACKBONE_PARAMS, BACKBONE_PREFIX, BACKBONE_SYMBOL,
                                      CHECKPOINTS, LATEST, SET_ASIDE, STATE, STEP_DIR, TMP_DIR, TRAINER_STATES,
                                      center_file, center_ranges, point_latest, resolve, step_folders, step_name,
                                      tmp_name)
from pfc_mx.checkpoint.blocks import BLOCK_BYTES, Transfer
from pfc_mx.checkpoint.loading import (Resumable, check_integrity, find_resumable, load_centers, load_centers_into,
                                       load_trainer_states)
from pfc_mx.checkpoint.saving import INJECT_SAVE_STALL, remove_incomplete, save, set_aside_newer

__all__ = [
    "BACKBONE_EPOCH", "BACKBONE_PARAMS", "BACKBONE_PREFIX", "BACKBONE_SYMBOL", "CHECKPOINTS", "LATEST",
    "SET_ASIDE", "STATE", "STEP_DIR", "TMP_DIR", "TRAINER_STATES", "center_file", "center_ranges", "point_latest",
    "resolve", "step_folders", "step_name", "tmp_name",
    "BLOCK_BYTES", "Transfer",
    "Resumable", "check_integrity", "find_resumable", "load_centers", "load_centers_into", "load_trainer_states",
    "INJECT_SAVE_STALL", "remove_incomplete", "save", "set_aside_newer",
]
