"""Learning-rate schedules (GluonCV's LRScheduler): warmup + polynomial decay, or multistep.

make_schedule gives lr(step); schedule_by_images gives lr(images trained), the form the
training loop uses so that a resume on another world size keeps the schedule.
"""
from __future__ import annotations

from typing import Callable

from gluoncv.utils import LRScheduler, LRSequential

from pfc_mx.config import OptimConfig
from pfc_mx.train.progress import Frame


def scaled_base_lr(optim: OptimConfig, global_batch: int) -> float:
    """optim.lr, scaled by global_batch / reference_batch when reference_batch > 0."""
    if optim.reference_batch > 0:
        return optim.lr * global_batch / optim.reference_batch
    return optim.lr


def make_schedule(optim: OptimConfig, base_lr: float, steps_per_epoch: int,
                  total_steps: int) -> Callable[[int], float]:
    """lr(step) for step in [0, total_steps).

    poly: linear warmup from 0 over warmup_epochs, then base_lr·(1 − t)^power down to 0 at
    total_steps (arcface_torch). multistep: base_lr·gamma^k after the k-th milestone (epochs),
    with the same optional warmup (the original MXNet recipe).
    """
    # GluonCV's schedulers divide by (niters - 1): each part spans 0 or at least 2 steps
    warmup = min(int(round(optim.warmup_epochs * steps_per_epoch)), max(total_steps - 2, 0))
    parts = []
    if warmup >= 2:
        parts.append(LRScheduler("linear", base_lr=0.0, target_lr=base_lr, niters=warmup))
    else:
        warmup = 0
    rest = max(total_steps - warmup, 2)
    if optim.schedule == "poly":
        parts.append(LRScheduler("poly", base_lr=base_lr, target_lr=0.0, niters=rest, power=optim.power))
    else:
        step_iter = [max(int(round(m * steps_per_epoch)) - warmup, 0) for m in optim.milestones]
        parts.append(LRScheduler("step", base_lr=base_lr, niters=rest, step_iter=step_iter,
                                 step_factor=optim.gamma))
    schedule = LRSequential(parts) if len(parts) > 1 else parts[0]
    return lambda step: float(schedule(step))


def schedule_by_images(optim: OptimConfig, base_lr: float, frame: Frame) -> Callable[[int], float]:
    """lr(images) for a step that starts after `images` trained images: make_schedule in steps of the
    run's unit frame.base_batch, evaluated at images / base_batch (a fraction between two such steps
    when the current global batch differs)."""
    steps_per_epoch = frame.num_images // frame.base_batch
    by_step = make_schedule(optim, base_lr, steps_per_epoch, optim.max_steps or optim.epochs * steps_per_epoch)
    return lambda images: by_step(frame.in_base_steps(images))
