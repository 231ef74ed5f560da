"""The loader's worker processes: the loop each one runs, and how a dead one is named.

A worker takes (task id, slot, indices, spares, key) from its task queue, writes the batch
into `slots[slot]` (a shared memory map) with pfc_mx.data.batch.load_batch and puts
(task id, used, corrupt, wrong, error) on the result queue; None ends it. It ignores SIGINT
and SIGTERM (the trainer decides when to stop) and leaves when its parent is gone.
"""
from __future__ import annotations

import os
import queue
import signal
from typing import Optional

import cv2
import numpy as np

from pfc_mx.data.batch import load_batch
from pfc_mx.data.recordio import RecordDataset
from pfc_mx.errors import DatasetError

POLL_S = 1.0  # seconds between checks that the parent (worker) or the workers (parent) still live


def worker_loop(dataset: RecordDataset, slots: np.ndarray, tasks, results, parent: int, mirror: bool,
                jitter: float, on_wrong_size: str) -> None:
    """Worker process loop: (task id, slot, indices, spares, key) → (task id, used, corrupt, wrong, error)."""
    cv2.setNumThreads(1)
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    while True:
        try:
            task = tasks.get(timeout=POLL_S)
        except queue.Empty:
            if os.getppid() != parent:  # the trainer died: do not linger
                return
            continue
        if task is None:
            return
        tid, slot, indices, spares, key = task
        try:
            used, corrupt, wrong = load_batch(dataset, indices, spares, slots[slot, :len(indices)], key, mirror,
                                              jitter, on_wrong_size)
            results.put((tid, used, corrupt, wrong, None))
        except Exception as e:  # reported to the parent, which raises it
            results.put((tid, None, None, None, e if isinstance(e, DatasetError) else
                         RuntimeError(f"data loader worker failed: {e!r}")))


def exit_reason(code: Optional[int]) -> str:
    """How a process ended, in words: 'exit code 3', 'killed by SIGKILL (...)'."""
    if code is None or code >= 0:
        return f"exit code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    hint = ": out of memory? (the kernel's OOM killer sends SIGKILL; see dmesg)" if -code == signal.SIGKILL else ""
    return f"killed by {name}{hint}"
