"""Progress counted in images (pfc_mx.train.progress) and the sampler's offset, against brute-force references."""
from __future__ import annotations

import numpy as np
import pytest

from pfc_mx.data.sampler import ShardedSampler
from pfc_mx.train.progress import Frame, Position, position_from_state


def walk(frame: Frame, pos: Position, global_batch: int) -> list:
    """Every position from pos to the end of the run, one step of global_batch at a time."""
    out = [pos]
    while not frame.finished(out[-1], global_batch):
        out.append(frame.advance(out[-1], global_batch))
    return out


def brute_force_epochs(num_images: int, epochs: int, batches: list) -> list:
    """Images per (epoch, step) when each epoch is cut, from its start, into the given global batches
    until fewer than the current batch are left."""
    images, trained = [], 0
    for epoch in range(epochs):
        offset = 0
        for g in batches[epoch]:
            if num_images - offset < g:
                break
            offset += g
            trained += g
            images.append(trained)
    return images


@pytest.mark.parametrize("n, g", [(96, 8), (72, 16), (100, 24), (7, 8)])
def test_an_uninterrupted_run_trains_whole_global_batches_of_every_epoch(n, g):
    frame = Frame(n, epochs=3, base_batch=g)
    path = walk(frame, Position(), g)
    assert [p.images for p in path[1:]] == brute_force_epochs(n, 3, [[g] * (n // g + 1)] * 3)
    assert len(path) - 1 == frame.steps_left(Position(), g) == 3 * (n // g)
    assert path[-1].epoch == (3 if n >= g else 0) and path[-1].offset == 0


@pytest.mark.parametrize("before, after, stop", [(8, 16, 14), (16, 8, 7), (8, 24, 5), (24, 16, 3), (16, 16, 9)])
def test_a_resume_with_another_global_batch_continues_the_epoch_where_it_stopped(before, after, stop):
    frame = Frame(96, epochs=3, base_batch=before)
    stopped = walk(frame, Position(), before)[stop]
    resumed = frame.start(stopped, after)
    rest = walk(frame, resumed, after)
    assert len(rest) - 1 == frame.steps_left(resumed, after)
    epochs = [p.epoch for p in [stopped, *rest]]
    assert epochs == sorted(epochs) and rest[-1].epoch == 3
    # the interrupted epoch goes on from its offset with the new batch; later epochs start at 0
    k = stopped.offset // before
    sizes = [[before] * 99] * stopped.epoch + [[before] * k + [after] * 99] + [[after] * 99] * (2 - stopped.epoch)
    trained = [p.images for p in walk(frame, Position(), before)[1:stop + 1] + rest[1:]]
    assert trained == brute_force_epochs(96, 3, sizes)
    assert 3 * 96 - max(before, after) * 3 < trained[-1] <= 3 * 96


def test_max_images_stops_before_a_step_that_would_pass_it():
    frame = Frame(96, epochs=1, base_batch=8, max_images=8 * 13)  # max_steps 13 of the first batch
    assert walk(frame, Position(), 8)[-1].images == 104
    half = walk(frame, Position(), 8)[7]  # 56 images, resumed with a batch of 16: 3 steps to 104
    assert walk(frame, half, 16)[-1].images == 104 and frame.steps_left(half, 16) == 3
    odd = walk(frame, Position(), 8)[6]  # 48 images: 3 steps of 16 fit (96), a fourth would pass 104
    assert walk(frame, odd, 16)[-1].images == 96


def test_crossed_fires_after_the_step_that_passes_each_multiple_of_the_period():
    frame = Frame(1000, epochs=1, base_batch=8)
    path = walk(frame, Position(), 24)  # steps three times the unit: period 2 (16 images) crosses at 24, 48, ...
    fired = [b.images for a, b in zip(path, path[1:]) if frame.crossed(a, b, 2)]
    assert fired == [p.images for p in path[1:] if p.images // 16 > (p.images - 24) // 16]
    assert not frame.crossed(path[0], path[1], 0)


def test_position_of_an_old_checkpoint_is_its_step_on_its_world_size():
    state = {"step": 11, "world_size": 2, "epoch": 2, "step_in_epoch": 3}
    assert position_from_state(state, batch_size=8, num_images=72) == Position(11, 176, 2, 48)
    assert position_from_state({}, 8, 72) == Position()
    new = {"step": 5, "images": 120, "epoch": 1, "offset": 24}
    assert position_from_state(new, 8, 96) == Position(5, 120, 1, 24)


def test_sampler_offset_continues_the_epoch_order_on_any_world_size():
    perm = ShardedSampler(100, 4, 0, 1, seed=3).permutation(2)
    for world, offset in ((1, 0), (2, 24), (3, 13), (5, 60)):
        shards = [ShardedSampler(100, 4, r, world, seed=3).indices(2, offset=offset) for r in range(world)]
        steps = (100 - offset) // (4 * world)
        glob = np.concatenate([np.concatenate([s[k] for s in shards]) for k in range(steps)]) if steps else []
        np.testing.assert_array_equal(glob, perm[offset:offset + steps * 4 * world])
    same = ShardedSampler(100, 4, 1, 2, seed=3)
    np.testing.assert_array_equal(same.indices(2, offset=3 * 8), same.indices(2, start_step=3))
    with pytest.raises(ValueError, match="offset 101"):
        same.indices(2, offset=101)
