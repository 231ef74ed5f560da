"""Which center rows a rank owns, how they start, and which of them a step uses: pure functions.

Usage::

    start, n = shard_range(num_classes, world, rank)
    for lo, hi, rows in init_center_rows(start, n, 512, seed):  # N(0, 0.01), chunk by chunk
        weight[lo:hi] = rows
    plan = plan_step(labels, start, n, sample_rate, step_rng(seed, rank, step))
    plan.index, plan.local_labels                  # rows used (sorted), labels remapped into them

Shards and sampling follow docs/design.md ("One training step", "Sampling"); the
initial centers of a global class depend only on the seed and the class id, never
on the world size, so any number of ranks starts from the same global center
matrix. Sampling: every positive class of the shard, then negatives drawn uniformly without
replacement among the other rows (the first non-positive rows of a random
ordering of the shard).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import numpy as np

INIT_STD = 0.01
INIT_BLOCK = 4096  # classes per independently seeded block of initial centers
MAX_ARRAY_ELEMENTS = 2 ** 31 - 2  # one MXNet array without USE_INT64_TENSOR_SIZE (the released wheels)


def shard_range(num_classes: int, world: int, rank: int) -> Tuple[int, int]:
    """(class_start, num_local) of rank: C // W classes each, the first C % W ranks one more."""
    base, extra = divmod(num_classes, world)
    return base * rank + min(rank, extra), base + (rank < extra)


def min_world(num_classes: int, dim: int) -> int:
    """Fewest ranks whose largest shard (num_local, dim) fits in one array of MAX_ARRAY_ELEMENTS."""
    return -(-num_classes // (MAX_ARRAY_ELEMENTS // dim))


def init_center_rows(class_start: int, num_local: int, dim: int, seed: int,
                     chunk: int = INIT_BLOCK) -> Iterator[Tuple[int, int, np.ndarray]]:
    """Yield (lo, hi, rows) covering local rows [0, num_local): rows (hi − lo, dim) float32 N(0, 0.01).

    Global class c is row c % INIT_BLOCK of block c // INIT_BLOCK, drawn from a
    generator seeded by (seed, block): the value of a class never depends on the
    shard layout. Memory: one block at a time, never (num_classes, dim).
    """
    end = class_start + num_local
    pos = class_start
    while pos < end:
        block, first = divmod(pos, INIT_BLOCK)
        last = min(end - block * INIT_BLOCK, INIT_BLOCK)  # exclusive, within the block
        rng = np.random.default_rng([seed, 0x9FC, block])
        rows = rng.standard_normal((last, dim), dtype=np.float32)
        rows *= np.float32(INIT_STD)  # in place: one block of temporary memory, not two
        rows = rows[first:]
        for a in range(0, len(rows), chunk):
            piece = rows[a:a + chunk]
            lo = pos - class_start + a
            yield lo, lo + len(piece), piece
        pos = block * INIT_BLOCK + last


def step_rng(seed: int, rank: int, step: int) -> np.random.Generator:
    """The sampling generator of (seed, rank, step): ranks and steps draw independent streams."""
    return np.random.default_rng([seed, rank, step, 0x5A3])


def num_sample(sample_rate: float, num_local: int, num_positive: int) -> int:
    """max(int(rate · num_local), positives), at most num_local."""
    return min(num_local, max(int(sample_rate * num_local), num_positive))


def sample_index(positives: np.ndarray, num_local: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted (count,) int64 rows: all positives plus count − |positives| uniform negatives.

    positives: sorted unique local rows that must be included (count >= len(positives)).
    Negatives: the first count − |positives| non-positive rows of `order`, count distinct rows in
    uniformly random order (Generator.choice without replacement, shuffled). Read as the start
    of a random permutation of the shard, whose non-positive rows are in turn a random
    permutation of the non-positives: so every subset of that size is equally likely. `order`
    holds at most |positives| positives, so there are always enough. No sort, no search: a
    linear pass over a mask of the shard (one byte per row) yields the sorted union. Time
    O(num_local); memory one byte per row, plus a transient int64 row range inside choice
    when count > num_local / 50 (NumPy then shuffles the whole range).
    """
    if count >= num_local:
        return np.arange(num_local, dtype=np.int64)
    positives = np.asarray(positives, dtype=np.int64)
    if count < len(positives):
        raise ValueError(f"count {count} is below the {len(positives)} positives that must be sampled")
    order = rng.choice(num_local, size=count, replace=False)
    used = np.zeros(num_local, dtype=bool)
    used[positives] = True
    used[order[~used[order]][:count - len(positives)]] = True
    return np.flatnonzero(used)


def remap_labels(local: np.ndarray, index: Optional[np.ndarray]) -> np.ndarray:
    """Local labels (−1: not in this shard) → columns of index (−1 stays −1); index None = all rows."""
    if index is None:
        return local
    out = np.full(local.shape, -1, dtype=np.int64)
    inside = local >= 0
    out[inside] = np.searchsorted(index, local[inside])
    return out


@dataclass(frozen=True)
class StepPlan:
    """Rows used by one step and the labels remapped into them."""

    index: Optional[np.ndarray]   # (S,) sorted local rows, None when every row is used
    num_rows: int                 # S
    local_labels: np.ndarray      # (N,) int64 column in [0, S) of each sample's class, −1 if elsewhere


def plan_step(labels: np.ndarray, class_start: int, num_local: int, sample_rate: float,
              rng: Optional[np.random.Generator]) -> StepPlan:
    """Plan a step for global labels (N,) of the whole batch on the shard [class_start, +num_local).

    rng is only drawn from when sampling is needed (rate < 1 and fewer rows than the shard).
    """
    local = np.asarray(labels, dtype=np.int64) - class_start
    local = np.where((local >= 0) & (local < num_local), local, -1)
    positives = np.unique(local[local >= 0])
    count = num_sample(sample_rate, num_local, len(positives))
    if count >= num_local:
        return StepPlan(None, num_local, local)
    if rng is None:
        raise ValueError("sampling needs a random generator")
    index = sample_index(positives, num_local, count, rng)
    return StepPlan(index, count, remap_labels(local, index))
