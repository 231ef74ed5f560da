"""LR schedules against closed-form references."""
from __future__ import annotations

import numpy as np
import pytest

from pfc_mx.config import OptimConfig
from pfc_mx.train.schedule import make_schedule, scaled_base_lr


def test_poly_decay_matches_closed_form_and_reaches_zero():
    lr = make_schedule(OptimConfig(power=2.0), 0.1, steps_per_epoch=10, total_steps=50)
    got = np.array([lr(s) for s in range(50)])
    want = 0.1 * (1 - np.arange(50) / 49) ** 2
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)


def test_warmup_rises_linearly_then_decays():
    lr = make_schedule(OptimConfig(warmup_epochs=1), 0.1, steps_per_epoch=10, total_steps=50)
    warm = [lr(s) for s in range(10)]
    assert warm[0] == 0 and all(b > a for a, b in zip(warm, warm[1:]))
    assert lr(10) == pytest.approx(0.1) and lr(49) == pytest.approx(0.0, abs=1e-9)


def test_multistep_drops_by_gamma_at_each_milestone():
    lr = make_schedule(OptimConfig(schedule="multistep", milestones=[2, 4], gamma=0.1), 0.1, 10, 50)
    assert [lr(s) for s in (0, 19, 20, 39, 40, 49)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


@pytest.mark.parametrize("total", [1, 2, 3, 4])
def test_tiny_runs_with_warmup_longer_than_the_run_stay_finite(total):
    lr = make_schedule(OptimConfig(warmup_epochs=1), 0.1, steps_per_epoch=4, total_steps=total)
    assert all(np.isfinite(lr(s)) and 0 <= lr(s) <= 0.1 for s in range(total))


def test_reference_batch_scales_lr_linearly():
    assert scaled_base_lr(OptimConfig(lr=0.1, reference_batch=1024), 256) == pytest.approx(0.025)
    assert scaled_base_lr(OptimConfig(lr=0.1), 256) == 0.1


def test_schedule_by_images_is_the_step_schedule_of_the_first_global_batch_at_any_batch():
    from pfc_mx.train.progress import Frame
    from pfc_mx.train.schedule import schedule_by_images
    optim = OptimConfig(power=2.0, epochs=5)
    frame = Frame(num_images=80, epochs=5, base_batch=8)  # 10 steps an epoch, 50 in all
    lr = schedule_by_images(optim, 0.1, frame)
    by_step = make_schedule(optim, 0.1, steps_per_epoch=10, total_steps=50)
    assert [lr(8 * k) for k in range(50)] == [by_step(k) for k in range(50)]  # bit for bit at the unit
    halves = np.arange(0, 392, 4)  # a global batch of 4 (half the unit): the closed form between the steps
    np.testing.assert_allclose([lr(int(n)) for n in halves], 0.1 * (1 - halves / 8 / 49) ** 2, rtol=1e-12)
    assert lr(8 * 60) == 0.0  # past the end: the schedule's last value
