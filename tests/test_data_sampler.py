"""pfc_mx.data.sampler: disjoint, complete, equal-length rank shards; seeded epochs; exact resume."""
from __future__ import annotations

import numpy as np
import pytest

from pfc_mx.data.sampler import ShardedSampler


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("num_samples,batch", [(100, 8), (97, 5), (24, 4)])
def test_ranks_are_disjoint_complete_up_to_the_remainder_and_equal_length(world, num_samples, batch):
    shards = [ShardedSampler(num_samples, batch, r, world, seed=3).indices(epoch=2) for r in range(world)]
    steps = num_samples // (batch * world)
    assert all(s.shape == (steps, batch) for s in shards)
    flat = np.concatenate([s.ravel() for s in shards])
    assert len(np.unique(flat)) == len(flat)  # disjoint, no repeats
    assert len(flat) == num_samples - num_samples % (batch * world)  # complete up to the dropped remainder
    assert flat.min() >= 0 and flat.max() < num_samples
    # the dropped remainder is exactly what the epoch's permutation puts last
    perm = ShardedSampler(num_samples, batch, 0, world, seed=3).permutation(2)
    assert set(perm[len(flat):]) == set(range(num_samples)) - set(flat.tolist())


def test_global_batch_is_the_concatenation_of_rank_batches_in_permutation_order():
    world, batch = 3, 4
    s = [ShardedSampler(50, batch, r, world, seed=1) for r in range(world)]
    perm = s[0].permutation(0)
    for step in range(s[0].batches_per_epoch):
        glob = np.concatenate([x.indices(0)[step] for x in s])
        np.testing.assert_array_equal(glob, perm[step * world * batch:(step + 1) * world * batch])


def test_epoch_and_seed_change_the_order_and_same_arguments_repeat_it():
    a = ShardedSampler(64, 8, 0, 2, seed=0)
    assert not np.array_equal(a.indices(0), a.indices(1))
    assert not np.array_equal(a.indices(0), ShardedSampler(64, 8, 0, 2, seed=1).indices(0))
    np.testing.assert_array_equal(a.indices(5), ShardedSampler(64, 8, 0, 2, seed=0).indices(5))


@pytest.mark.parametrize("start", [0, 1, 3, 4])
def test_resume_at_step_continues_the_identical_order(start):
    s = ShardedSampler(40, 5, 1, 2, seed=7)
    np.testing.assert_array_equal(s.indices(3, start_step=start), s.indices(3)[start:])


def test_too_few_samples_give_zero_batches_and_bad_arguments_raise():
    assert ShardedSampler(7, 4, 0, 2).batches_per_epoch == 0
    assert ShardedSampler(7, 4, 0, 2).indices(0).shape == (0, 4)
    for args in [(10, 0, 0, 1), (10, 2, 2, 2), (10, 2, -1, 2)]:
        with pytest.raises(ValueError):
            ShardedSampler(*args)
    with pytest.raises(ValueError):
        ShardedSampler(10, 2, 0, 1).indices(0, start_step=6)
