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
