"""Rank-sharded, seeded, resumable order of the training images.

Usage::

    s = ShardedSampler(num_samples=5_822_653, batch_size=128, rank=r, world_size=8, seed=0)
    for step, batch in enumerate(s.indices(epoch)):   # (batches_per_epoch, 128) image indices
        ...
    s.indices(epoch, start_step=k)                     # the same rows from step k on (resume)
    s.indices(epoch, offset=n)                         # the epoch's order from its n-th image on

Each epoch draws one permutation of all samples from (seed, epoch), the same for any
number of ranks. From `offset` (images of that order already trained, 0 at the start of
an epoch) on, it is cut into global batches of W · B, and rank r takes the r-th block of B
of every global batch. Ranks therefore see disjoint samples and the same number of
batches; the remainder (< W · B samples) is dropped and changes with the epoch. A run
resumed on another number of ranks continues the interrupted epoch's order at the image
where it stopped (elastic resume, docs/training.md).
"""
from __future__ import annotations

import numpy as np


def global_batches_left(num_images: int, offset: int, global_batch: int) -> int:
    """Whole global batches left in an epoch of num_images once `offset` of its images were trained."""
    return max(int(num_images) - int(offset), 0) // global_batch


class ShardedSampler:
    """Disjoint per-rank batches of a seeded per-epoch permutation of range(num_samples)."""

    def __init__(self, num_samples: int, batch_size: int, rank: int, world_size: int, seed: int = 0):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or num_samples < 0:
            raise ValueError(f"invalid sampler: {num_samples} samples, batch {batch_size}, "
                             f"rank {rank} of {world_size}")
        self.num_samples, self.batch_size = int(num_samples), int(batch_size)
        self.rank, self.world_size, self.seed = int(rank), int(world_size), int(seed)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def batches_from(self, offset: int) -> int:
        """Global batches left in an epoch once `offset` of its images were trained."""
        return global_batches_left(self.num_samples, offset, self.global_batch)

    def permutation(self, epoch: int) -> np.ndarray:
        """(num_samples,) int64: the epoch's global order, identical on every rank."""
        return np.random.default_rng([self.seed, int(epoch)]).permutation(self.num_samples)

    def indices(self, epoch: int, start_step: int = 0, offset: int = 0,
                order: "np.ndarray | None" = None) -> np.ndarray:
        """(batches_from(offset) − start_step, batch_size) int64 image indices of this rank.

        offset: images of the epoch's order trained before (any count, e.g. by another world
        size); start_step: global batches of this sampler to skip after it; order: the epoch's
        permutation when the caller already drew it (it is the costly part: ~1 s per 10 M images).
        """
        if not 0 <= offset <= self.num_samples:
            raise ValueError(f"offset {offset} outside [0, {self.num_samples}]")
        steps, b, w = self.batches_from(offset), self.batch_size, self.world_size
        if not 0 <= start_step <= steps:
            raise ValueError(f"start_step {start_step} outside [0, {steps}]")
        order = self.permutation(epoch) if order is None else order
        used = order[offset:offset + steps * w * b].reshape(steps, w, b)
        return np.ascontiguousarray(used[start_step:, self.rank])
