"""Parallel decode + augment of rank-sharded batches, prefetched ahead of the training step.

Usage::

    with RecordLoader(RecordDataset(root), batch_size=128, rank=r, world_size=w, seed=0) as loader:
        for images, labels in loader.epoch(epoch, start_step=k):   # (B, 3, 112, 112) uint8 RGB, (B,) int32
            ...

Worker processes (pfc_mx.data.workers; forked once, reused across epochs) read records by
index, decode with OpenCV, resize to 112×112 if needed (pfc_mx.data.batch), and write the
batch into one of `prefetch` slots of an anonymous shared memory map; only indices travel
through the queues. num_workers=0 does the same work in the calling process. Batch k of an epoch depends only on
(seed, epoch, k, rank), never on the number of workers, so runs and resumes are reproducible.

A damaged record (one that does not decode, a JPEG or PNG cut short, decoder warnings:
pfc_mx.data.integrity) is skipped with a warning naming why, counted and replaced by a
spare record of the same rank's epoch shard (drawn from the same seed), so batch shapes
stay fixed. More distinct corrupt records in one epoch than max_corrupt_fraction of the
images the rank reads per epoch stops the run with DatasetError. Images of another size or
channel count than 112x112x3 are resized (on_wrong_size "resize"), replaced like damaged
ones ("skip") or stop the run ("error"); a sample of headers is checked when the loader
opens. `health` (pfc_mx.data.health) keeps both kinds; `state()`/`restore()` carry it
through a checkpoint.
Workers ignore SIGINT and SIGTERM: the trainer decides when to stop (a preemption signal
sent to the whole process group must not kill them under it).
"""
from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import queue
import sys
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np

from pfc_mx.data.batch import load_batch
from pfc_mx.data.checks import check_sample
from pfc_mx.data.health import DataHealth
from pfc_mx.data.options import IMAGE_SIZE, WRONG_SIZE_POLICIES
from pfc_mx.data.recordio import RecordDataset
from pfc_mx.data.sampler import ShardedSampler
from pfc_mx.data.workers import POLL_S, exit_reason, worker_loop

NUM_SPARES = 8  # replacement candidates per batch for corrupt records


class RecordLoader:
    """Batches of (images (B, 3, 112, 112) uint8 RGB, labels (B,) int32) for one rank."""

    def __init__(self, dataset: RecordDataset, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 num_workers: int = 2, mirror: bool = True, color_jitter: float = 0.0, prefetch: int = 4,
                 max_corrupt_fraction: float = 0.02, on_wrong_size: str = "resize"):
        self.dataset = dataset
        self.sampler = ShardedSampler(dataset.num_images, batch_size, rank, world_size, seed)
        self.batch_size, self.rank, self.seed = batch_size, rank, seed
        self.num_workers, self.mirror, self.color_jitter = int(num_workers), bool(mirror), float(color_jitter)
        if on_wrong_size not in WRONG_SIZE_POLICIES:
            raise ValueError(f"on_wrong_size must be one of {WRONG_SIZE_POLICIES}, got {on_wrong_size!r}")
        self.on_wrong_size = on_wrong_size
        check_sample(dataset, IMAGE_SIZE, on_wrong_size)
        self.health = DataHealth(dataset, self.batches_per_epoch * batch_size, max_corrupt_fraction, on_wrong_size)
        self._generation = 0
        self._next_tid = 0
        self._inflight: Dict[int, int] = {}  # task id -> slot
        self._done: Dict[int, tuple] = {}
        self._workers: List[mp.Process] = []
        num_slots = max(int(prefetch), self.num_workers, 1)
        shape = (num_slots, batch_size, 3, IMAGE_SIZE, IMAGE_SIZE)
        self._map = mmap.mmap(-1, int(np.prod(shape)))  # MAP_SHARED | MAP_ANONYMOUS: shared with forked workers
        self._slots = np.frombuffer(self._map, np.uint8).reshape(shape)
        self._free = list(range(num_slots))
        if self.num_workers > 0:
            self._start_workers()

    @property
    def batches_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch

    def state(self) -> Dict[str, List[int]]:
        """This rank's damaged and wrongly sized images so far (DataHealth.state); merge ranks' with
        pfc_mx.data.health.merge."""
        return self.health.state()

    def restore(self, state: Dict[str, Any], mid_epoch: bool = True) -> None:
        """Resume from a checkpoint's merged state (DataHealth.restore)."""
        self.health.restore(state, mid_epoch)

    def _start_workers(self) -> None:
        method = "fork" if sys.platform.startswith("linux") else None
        ctx = mp.get_context(method)
        self._tasks, self._results = ctx.Queue(), ctx.Queue()
        for n in range(self.num_workers):
            p = ctx.Process(target=worker_loop, name=f"pfc-loader-{self.rank}-{n}", daemon=True,
                            args=(self.dataset, self._slots, self._tasks, self._results, os.getpid(),
                                  self.mirror, self.color_jitter, self.on_wrong_size))
            p.start()
            self._workers.append(p)

    def epoch(self, epoch: int, start_step: int = 0, offset: int = 0) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """Iterator over the batches of `epoch` from `start_step` on; a new call supersedes an older iterator.

        offset: images of the epoch's order trained before this iterator (a resume, perhaps on
        another number of ranks): its batches start there (ShardedSampler.indices).
        """
        order = self.sampler.permutation(epoch)  # drawn once for both
        plan = self.sampler.indices(epoch, start_step, offset, order=order)
        # the rank's share of the whole epoch, cut at the same global-batch boundaries as `plan`
        first, rest = divmod(offset, self.sampler.global_batch)
        shard = self.sampler.indices(epoch, offset=rest, order=order).ravel()
        del order
        self._generation += 1
        self.health.start_epoch(shard)
        return self._iterate(self._generation, epoch, first + start_step, plan, shard)

    def _spares(self, epoch: int, step: int, shard: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch, step, self.rank, 1])
        return shard[rng.integers(0, shard.size, NUM_SPARES)] if shard.size else shard

    def _iterate(self, generation: int, epoch: int, start: int, plan: np.ndarray,
                 shard: np.ndarray) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        self._drain()
        steps = range(start, start + len(plan))
        if self.num_workers == 0:
            out = self._slots[0]
            for step, indices in zip(steps, plan):
                self._check_current(generation)
                used, corrupt, wrong = load_batch(self.dataset, indices, self._spares(epoch, step, shard), out,
                                                  (self.seed, epoch, step, self.rank), self.mirror,
                                                  self.color_jitter, self.on_wrong_size)
                self.health.note_wrong_size(wrong)
                self.health.note_corrupt(corrupt)
                yield out.copy(), self.dataset.labels[used]
            return
        submitted: List[int] = []  # task ids in step order
        next_submit = 0
        for n in range(len(plan)):
            self._check_current(generation)
            while next_submit < len(plan) and self._free:
                step = start + next_submit
                slot = self._free.pop()
                tid = self._next_tid
                self._next_tid += 1
                self._inflight[tid] = slot
                self._tasks.put((tid, slot, plan[next_submit], self._spares(epoch, step, shard),
                                 (self.seed, epoch, step, self.rank)))
                submitted.append(tid)
                next_submit += 1
            tid = submitted[n]
            used, corrupt, wrong, error = self._wait(tid)
            slot = self._inflight.pop(tid)
            if error is None:
                images = self._slots[slot].copy()
            self._free.append(slot)
            if error is not None:
                raise error
            self.health.note_wrong_size(wrong)
            self.health.note_corrupt(corrupt)
            yield images, self.dataset.labels[used]

    def _check_current(self, generation: int) -> None:
        if generation != self._generation:
            raise RuntimeError("this epoch iterator was superseded by a later RecordLoader.epoch() call")

    def _wait(self, tid: int) -> tuple:
        """Block until task tid is done; results of other tasks are kept for later."""
        while tid not in self._done:
            try:
                got = self._results.get(timeout=POLL_S)
            except queue.Empty:
                dead = [p for p in self._workers if not p.is_alive()]
                if dead:
                    raise RuntimeError(f"data loader worker {dead[0].name} died ({exit_reason(dead[0].exitcode)})")
                continue
            self._done[got[0]] = got[1:]
        return self._done.pop(tid)

    def _drain(self) -> None:
        """Wait for the tasks of an abandoned iterator and free their slots."""
        for tid in list(self._inflight):
            self._wait(tid)
            self._free.append(self._inflight.pop(tid))

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        workers, self._workers = self._workers, []
        if not workers:
            return
        for _ in workers:
            self._tasks.put(None)
        for p in workers:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        self._tasks.close()
        self._results.close()
        self._inflight.clear()

    def __enter__(self) -> "RecordLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
