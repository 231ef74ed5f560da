"""Parallel decode + augment of rank-sharded batches, prefetched ahead of the training step.

Usage::

    with RecordLoader(RecordDataset(root), batch_size=128, rank=r, world_size=w, seed=0) as loader:
        for images, labels in loader.epoch(epoch, start_step=k):   # (B, 3, 112, 112) uint8 RGB, (B,) int32
            ...

Worker processes (forked once, reused across epochs) read records by index, decode with
OpenCV, resize to 112×112 if needed, and write the batch into one of `prefetch` slots of
an anonymous shared memory map; only indices travel through the queues. num_workers=0
does the same work in the calling process. Batch k of an epoch depends only on
(seed, epoch, k, rank), never on the number of workers, so runs and resumes are reproducible.

A damaged record (one that does not decode, a JPEG or PNG cut short, decoder warnings:
pfc_mx.data.integrity) is skipped with a warning naming why, counted and replaced by a
spare record of the same rank's epoch shard (drawn from the same seed), so batch shapes
stay fixed. More distinct corrupt records in one epoch than max_corrupt_fraction of the
images the rank reads per epoch stops the run with DatasetError; `corrupt` keeps every
corrupt record met. Images of another size or channel count than 112x112x3 are resized
(on_wrong_size "resize"), replaced like damaged ones ("skip") or stop the run ("error");
`wrong_size` keeps them, and a sample of headers is checked when the loader opens.
Workers ignore SIGINT and SIGTERM: the trainer decides when to stop (a preemption signal
sent to the whole process group must not kill them under it).
"""
from __future__ import annotations

import logging
import mmap
import multiprocessing as mp
import os
import queue
import signal
import sys
from typing import Dict, Iterable, Iterator, List, Optional, Set, Tuple

import cv2
import numpy as np

from pfc_mx.data import augment
from pfc_mx.data.checks import IMAGE_SIZE, WRONG_SIZE_POLICIES, check_sample, decode
from pfc_mx.data.recordio import RecordDataset, unpack_header
from pfc_mx.data.sampler import ShardedSampler
from pfc_mx.errors import DatasetError

log = logging.getLogger(__name__)

NUM_SPARES = 8  # replacement candidates per batch for corrupt records
_POLL_S = 1.0


def load_batch(dataset: RecordDataset, indices: np.ndarray, spares: np.ndarray, out: np.ndarray,
               key: Tuple[int, ...], mirror: bool, color_jitter: float,
               on_wrong_size: str = "resize") -> Tuple[np.ndarray, Dict[int, str], Dict[int, str]]:
    """Decode + augment images `indices` (B,) into out (B, 3, S, S) uint8.

    Returns (used (B,) image indices actually placed, after replacing damaged (or, with
    on_wrong_size "skip", wrongly sized) ones from `spares`; {damaged image index: why};
    {image index of another size or channel count: its 'WxHxC'}). key seeds the augmentation.
    """
    used = np.array(indices, np.int64)
    corrupt: Dict[int, str] = {}
    wrong: Dict[int, str] = {}
    spare_iter = iter(spares.tolist())
    missing = []
    size = out.shape[-1]
    for pos, i in enumerate(indices.tolist()):
        while True:
            img, fault, shape = decode(dataset, i, size, on_wrong_size)
            if shape:
                wrong[i] = shape
            if img is not None:
                break
            if fault:
                corrupt[i] = fault
            i = next(spare_iter, None)
            if i is None:
                break
        if img is None:
            missing.append(pos)
            continue
        used[pos] = i
        out[pos] = img.transpose(2, 0, 1)
    if missing:  # spares exhausted: repeat decoded images of this batch
        good = np.setdiff1d(np.arange(len(indices)), missing)
        if good.size == 0:
            raise DatasetError(f"{dataset.path}: no image of a batch of {len(indices)} (and {len(spares)} spares) "
                               "decodes" + (f" at {size}x{size}x3 (data.on_wrong_size: skip)" if wrong else ""))
        for n, pos in enumerate(missing):
            src = good[n % good.size]
            out[pos], used[pos] = out[src], used[src]
    params = augment.draw(np.random.default_rng(list(key)), len(indices), mirror, color_jitter)
    out[...] = augment.apply(out, params)
    return used, corrupt, wrong


def _worker(dataset: RecordDataset, slots: np.ndarray, tasks, results, parent: int, mirror: bool,
            jitter: float, on_wrong_size: str) -> None:
    """Worker process loop: (task id, slot, indices, spares, key) → (task id, used, corrupt, wrong, error)."""
    cv2.setNumThreads(1)
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    while True:
        try:
            task = tasks.get(timeout=_POLL_S)
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


class RecordLoader:
    """Batches of (images (B, 3, 112, 112) uint8 RGB, labels (B,) int32) for one rank."""

    def __init__(self, dataset: RecordDataset, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 num_workers: int = 2, mirror: bool = True, color_jitter: float = 0.0, prefetch: int = 4,
                 max_corrupt_fraction: float = 0.02, on_wrong_size: str = "resize"):
        self.dataset = dataset
        self.sampler = ShardedSampler(dataset.num_images, batch_size, rank, world_size, seed)
        self.batch_size, self.rank, self.seed = batch_size, rank, seed
        self.num_workers, self.mirror, self.color_jitter = int(num_workers), bool(mirror), float(color_jitter)
        self.max_corrupt_fraction = float(max_corrupt_fraction)
        if on_wrong_size not in WRONG_SIZE_POLICIES:
            raise ValueError(f"on_wrong_size must be one of {WRONG_SIZE_POLICIES}, got {on_wrong_size!r}")
        self.on_wrong_size = on_wrong_size
        self.wrong_size: Dict[int, str] = {}  # every distinct image of another size or channel count met: 'WxHxC'
        check_sample(dataset, IMAGE_SIZE, on_wrong_size)
        self.corrupt: Set[int] = set()  # every distinct corrupt record met (image indices)
        self._epoch_corrupt: Set[int] = set()  # those met in the current epoch
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

    @property
    def corrupt_count(self) -> int:
        """Distinct records skipped as corrupt so far by this loader."""
        return len(self.corrupt)

    def _start_workers(self) -> None:
        method = "fork" if sys.platform.startswith("linux") else None
        ctx = mp.get_context(method)
        self._tasks, self._results = ctx.Queue(), ctx.Queue()
        for n in range(self.num_workers):
            p = ctx.Process(target=_worker, name=f"pfc-loader-{self.rank}-{n}", daemon=True,
                            args=(self.dataset, self._slots, self._tasks, self._results, os.getpid(),
                                  self.mirror, self.color_jitter, self.on_wrong_size))
            p.start()
            self._workers.append(p)

    def epoch(self, epoch: int, start_step: int = 0, met: Iterable[int] = (),
              offset: int = 0) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """Iterator over the batches of `epoch` from `start_step` on; a new call supersedes an older iterator.

        offset: images of the epoch's order trained before this iterator (a resume, perhaps on
        another number of ranks): its batches start there (ShardedSampler.indices).
        met: corrupt records (image indices) met earlier in this epoch, before a resume; those in
        this rank's epoch shard count toward the epoch's max_corrupt_fraction again.
        """
        plan = self.sampler.indices(epoch, start_step, offset)
        # the rank's share of the whole epoch, cut at the same global-batch boundaries as `plan`
        first, rest = divmod(offset, self.sampler.global_batch)
        shard = self.sampler.indices(epoch, offset=rest).ravel()
        self._generation += 1
        met = np.fromiter(met, dtype=np.int64)
        self._epoch_corrupt = set(np.intersect1d(met, shard).tolist())
        return self._iterate(self._generation, epoch, first + start_step, plan, shard)

    @property
    def epoch_corrupt(self) -> List[int]:
        """The distinct corrupt records met in the current epoch (image indices, sorted)."""
        return sorted(self._epoch_corrupt)

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
                self._note_wrong(wrong)
                self._note_corrupt(corrupt, used)
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
            self._note_wrong(wrong)
            self._note_corrupt(corrupt, used)
            yield images, self.dataset.labels[used]

    def _check_current(self, generation: int) -> None:
        if generation != self._generation:
            raise RuntimeError("this epoch iterator was superseded by a later RecordLoader.epoch() call")

    def _wait(self, tid: int) -> tuple:
        """Block until task tid is done; results of other tasks are kept for later."""
        while tid not in self._done:
            try:
                got = self._results.get(timeout=_POLL_S)
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

    def _note_wrong(self, wrong: Dict[int, str]) -> None:
        """Log the first few images of another size or channel count met, then every 1000th."""
        for i, shape in wrong.items():
            if i in self.wrong_size:
                continue
            self.wrong_size[i] = shape
            n = len(self.wrong_size)
            if n <= 5 or n % 1000 == 0:
                what = "resized" if self.on_wrong_size == "resize" else "skipped"
                log.warning("%s record %d (image %d) of %s: it is %s (WxHxC), not %dx%dx3 (data.on_wrong_size %s; "
                            "%d such image(s) so far)", what, self.dataset.keys[i], i, self.dataset.path, shape,
                            IMAGE_SIZE, IMAGE_SIZE, self.on_wrong_size, n)

    def _note_corrupt(self, corrupt: Dict[int, str], used: np.ndarray) -> None:
        new = [i for i in corrupt if i not in self.corrupt]
        for i in new:
            log.warning("skipping corrupt record %d (image %d) of %s: %s; replaced by a spare",
                        self.dataset.keys[i], i, self.dataset.path, corrupt[i])
        self.corrupt.update(new)
        fresh = [i for i in corrupt if i not in self._epoch_corrupt]
        self._epoch_corrupt.update(fresh)
        limit = self.max_corrupt_fraction * self.batches_per_epoch * self.batch_size
        if fresh and len(self._epoch_corrupt) > limit:
            raise DatasetError(f"{self.dataset.path}: {len(self._epoch_corrupt)} corrupt records exceed "
                               f"max_corrupt_fraction {self.max_corrupt_fraction:g} of the "
                               f"{self.batches_per_epoch * self.batch_size} images this rank reads per epoch "
                               f"(first: record {self.dataset.keys[min(self._epoch_corrupt)]})")

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
