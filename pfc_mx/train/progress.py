"""Where a run stands, counted in training images, so that a resume on any world size keeps the schedule.

The rule (docs/training.md, "Resume on another number of GPUs"): a run's progress is the number of
images it has trained. The global batch of the run's first start, `base_batch` (W₀ × B₀), is
its unit: the step counts of the config that shape the run (optim.max_steps,
output.checkpoint_every, eval.every) and the learning-rate schedule are in steps of
base_batch, i.e. in images / base_batch (output.log_every, a reporting setting, counts the
steps the processes take). A step of another global batch G advances the run by G images, so

- the lr of a step that starts after `images` trained images is schedule(images / base_batch);
- a periodic event of period P steps happens after the step that crosses a multiple of
  P × base_batch images;
- an epoch is one pass over the epoch's permutation (pfc_mx.data.sampler) in global batches of
  the current G; it ends when fewer than G of its images are left (those are dropped, as in
  every epoch), and the next one starts at image 0 of the next permutation.

Usage::

    frame = Frame(num_images=N, epochs=20, base_batch=1024, max_images=0)
    pos = frame.start(Position(), G)            # or the position a checkpoint stored
    while not frame.finished(pos, G):
        after = frame.advance(pos, G)           # ... train the step from pos to after ...
        if frame.crossed(pos, after, 2000):     # every 2000 steps of base_batch
            ...
        pos = after
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict

from pfc_mx.data.sampler import global_batches_left


@dataclass(frozen=True)
class Position:
    """A point of a run: `step` steps done, `images` images trained in all, in epoch `epoch`
    of which the first `offset` images of its order are trained."""

    step: int = 0
    images: int = 0
    epoch: int = 0
    offset: int = 0

    def to_state(self) -> Dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Frame:
    """What fixes a run's progress: the dataset size, epochs, the unit base_batch (images per
    config step) and the image budget max_images (0: the epochs decide)."""

    num_images: int
    epochs: int
    base_batch: int
    max_images: int = 0

    def steps_in_epoch(self, offset: int, global_batch: int) -> int:
        """Steps of global_batch left in an epoch once `offset` of its images are trained."""
        return global_batches_left(self.num_images, offset, global_batch)

    def start(self, pos: Position, global_batch: int) -> Position:
        """pos, moved to the next epoch when fewer than global_batch images are left in its own
        (a run saved with a smaller global batch near the end of an epoch)."""
        if pos.offset and self.steps_in_epoch(pos.offset, global_batch) == 0:
            return Position(pos.step, pos.images, pos.epoch + 1, 0)
        return pos

    def finished(self, pos: Position, global_batch: int) -> bool:
        """Whether the run is done at pos: every epoch trained, or no step of global_batch fits in
        max_images any more."""
        if self.steps_in_epoch(pos.offset, global_batch) == 0:  # not even one global batch in the data
            return True
        if self.max_images:
            return pos.images + global_batch > self.max_images
        return pos.epoch >= self.epochs

    def advance(self, pos: Position, global_batch: int) -> Position:
        """The position after one step of global_batch images from pos."""
        offset = pos.offset + global_batch
        epoch = pos.epoch
        if self.steps_in_epoch(offset, global_batch) == 0:
            epoch, offset = epoch + 1, 0
        return Position(pos.step + 1, pos.images + global_batch, epoch, offset)

    def steps_left(self, pos: Position, global_batch: int) -> int:
        """Steps of global_batch from pos to the end of the run."""
        if self.steps_in_epoch(pos.offset, global_batch) == 0:
            return 0
        if self.max_images:
            return max(self.max_images - pos.images, 0) // global_batch
        if pos.epoch >= self.epochs:
            return 0
        per_epoch = self.steps_in_epoch(0, global_batch)
        return self.steps_in_epoch(pos.offset, global_batch) + (self.epochs - pos.epoch - 1) * per_epoch

    def in_base_steps(self, images: int) -> float:
        """images in steps of base_batch: the argument of the lr schedule."""
        return images / self.base_batch

    def crossed(self, before: Position, after: Position, period_steps: int) -> bool:
        """Whether the step from before to after crossed a multiple of period_steps × base_batch images."""
        unit = period_steps * self.base_batch
        return period_steps > 0 and after.images // unit > before.images // unit


def position_from_state(state: Dict[str, Any], batch_size: int, num_images: int) -> Position:
    """The Position a checkpoint's state.json holds (older checkpoints, which stored only the step
    and the world size, are read as a run that always had that world size)."""
    if "images" in state:
        return Position(int(state["step"]), int(state["images"]), int(state["epoch"]), int(state["offset"]))
    step = int(state.get("step", 0))
    if not step:
        return Position()
    global_batch = int(state["world_size"]) * batch_size
    epoch, in_epoch = divmod(step, max(num_images // global_batch, 1))
    return Position(step, step * global_batch, epoch, in_epoch * global_batch)
