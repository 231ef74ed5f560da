"""Rank-sharded, seeded, resumable order of the training images.

Usage::

    s = ShardedSampler(num_samples=5_822_653, batch_size=128, rank=r, world_size=8, seed=0)
    for step, batch in enumerate(s.indices(epoch)):   # (batches_per_epoch, 128) image indices
        ...
    s.indices(epoch, start_step=k)                     # the same rows from step k on (resume)

Each epoch draws one permutation of all samples from (seed, epoch); its first
batches_per_epoch · W · B entries are cut into global batches of W · B, and rank r takes
the r-th block of B of every global batch. Ranks therefore see disjoint samples and the
same number of batches; the remainder (< W · B samples) is dropped and changes with the epoch.
"""
from __future__ import annotations

import numpy as np


class ShardedSampler:
    """Disjoint per-rank batches of a seeded per-epoch permutation of range(num_samples)."""

    def __init__(self, num_samples: int, batch_size: int, rank: int, world_size: int, seed: int = 0):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or num_samples < 0:
            raise ValueError(f"invalid sampler: {num_samples} samples, batch {batch_size}, "
                             f"rank {rank} of {world_size}")
        self.num_samples, self.batch_size = int(num_samples), int(batch_size)
        self.rank, self.world_size, self.seed = int(rank), int(world_size), int(seed)

    @property
    def batches_per_epoch(self) -> int:
        return self.num_samples // (self.batch_size * self.world_size)

    def permutation(self, epoch: int) -> np.ndarray:
        """(num_samples,) int64: the epoch's global order, identical on every rank."""
        return np.random.default_rng([self.seed, int(epoch)]).permutation(self.num_samples)

    def indices(self, epoch: int, start_step: int = 0) -> np.ndarray:
        """(batches_per_epoch − start_step, batch_size) int64 image indices of this rank."""
        steps, b, w = self.batches_per_epoch, self.batch_size, self.world_size
        if not 0 <= start_step <= steps:
            raise ValueError(f"start_step {start_step} outside [0, {steps}]")
        used = self.permutation(epoch)[:steps * w * b].reshape(steps, w, b)
        return np.ascontiguousarray(used[start_step:, self.rank])
