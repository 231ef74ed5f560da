"""The step loop: each step, a batch → backbone → PartialFC → summed gradients → SGD and the center update.

One step on W ranks equals one step on one rank holding the whole global batch:
PartialFC returns the gradient of the global mean loss w.r.t. this rank's
embeddings, so the backbone gradients of the ranks are summed (not averaged).
Progress is counted in images (pfc_mx.train.progress); the parts are built by
pfc_mx.train.build, the job around the loop is pfc_mx.train.job.

Faults (docs/reliability.md): at every step boundary the ranks agree (pfc_mx.train.faults)
whether a stop signal arrived or a rank failed to load its batch; a signal ends the run
with a complete checkpoint at that boundary (summary `preempted`), a failure stops every
rank with the same error. A non-finite loss or gradient stops the run, or skips the step
on every rank while `optim.skip_nonfinite` allows it.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import mxnet as mx
import numpy as np
from mxnet import autograd

from pfc_mx import checkpoint, dist
from pfc_mx.config import Config, save_config
from pfc_mx.data.health import describe, merge
from pfc_mx.data.options import IMAGE_SIZE
from pfc_mx.errors import TrainingError
from pfc_mx.strict_json import finite_or_none
from pfc_mx.train import build, faults, pretrained, resume
from pfc_mx.train.injection import Injection
from pfc_mx.train.progress import Position
from pfc_mx.train.reporting import Reporter
from pfc_mx.train.sync import average_running_stats, running_stats, sum_gradients
from pfc_mx.train.verification import VerificationTargets
from symbols.legacy import save_backbone

log = logging.getLogger("pfc_mx.train")

Batch = Tuple[np.ndarray, np.ndarray]


class Run:
    """One rank's training run: model, optimizer, data, and where the run stands (a Position)."""

    def __init__(self, cfg: Config, out: Path, injection: Injection) -> None:
        self.loader = None
        try:
            self._build(cfg, out, injection)
        except BaseException:
            if self.loader is not None:   # its worker processes would keep this process alive
                self.loader.close()
            raise

    def _build(self, cfg: Config, out: Path, injection: Injection) -> None:
        self.cfg, self.out, self.injection = cfg, out, injection
        self.ctx, world = dist.context(), dist.size()
        if dist.rank() == 0:
            save_config(cfg, out / "config.yaml")
        self.num_classes, self.loader = build.data(cfg, dist.rank(), world)
        self.global_batch = self.loader.sampler.global_batch
        self.net = build.backbone(cfg, self.ctx)
        self.params = [p for p in self.net.collect_params().values() if p.grad_req != "null"]
        self.stats = running_stats(self.net)  # batch-norm running statistics: restored after a skipped step
        self.trainer = build.trainer(cfg, self.net)
        self.pfc = build.head(cfg, self.num_classes, self.ctx)
        state, self.last_ckpt = resume.resume(cfg, out, self.net, self.trainer, self.pfc, self.num_classes)
        if self.last_ckpt is None and cfg.model.pretrained:     # fine-tuning (pfc_mx/train/pretrained.py)
            pretrained.initialise(cfg, self.net, self.pfc, self.num_classes)
        course = build.course(cfg, state, self.loader.dataset.num_images, self.global_batch, world)
        self.loader.restore(state, mid_epoch=course.start.offset > 0)
        self.frame, self.schedule, self.start = course.frame, course.schedule, course.start
        self.saved_step = course.saved.step  # the step of the newest checkpoint (0: nothing to save yet)
        self.total_steps = self.start.step + self.frame.steps_left(self.start, self.global_batch)
        self.nonfinite_steps: List[int] = [int(s) for s in state.get("nonfinite_steps", [])]
        self.loss, self.lr = float("nan"), float(state.get("lr", 0.0))
        dist.broadcast_parameters(self.net.collect_params(), root=0)
        log.info("training %s on %d rank(s) (%s): %d classes, %d images, global batch %d, %d steps/epoch, "
                 "%d steps, lr %.4g, sample rate %.3g", cfg.model.name, world, self.ctx, self.num_classes,
                 self.frame.num_images, self.global_batch, self.loader.batches_per_epoch, self.total_steps,
                 course.base_lr, cfg.partial_fc.sample_rate)
        if self.last_ckpt is not None:
            log.info(resume.describe(self.last_ckpt, state, self.start, self.frame.base_batch, self.global_batch,
                                     self.total_steps - self.start.step, self.schedule(self.start.images)))
        self.targets = VerificationTargets.find(Path(cfg.data.rec), cfg.eval.targets)
        self.reporter = Reporter(out, self.total_steps, self.global_batch, self.start.step,
                                 tensorboard=cfg.output.tensorboard)

    # ------------------------------------------------------------------ the loop
    def execute(self, signals: faults.StopSignals) -> Dict[str, Any]:
        """Train to the end, or to the step boundary where a stop signal was agreed on."""
        batches: Optional[Iterator[Batch]] = None
        pos = self.start
        while not self.frame.finished(pos, self.global_batch):
            error: Optional[BaseException] = None
            try:
                if batches is None:
                    batches = self.loader.epoch(pos.epoch, offset=pos.offset)
                images, labels = next(batches)
            except Exception as e:  # raised below on every rank, so no rank waits in a collective
                error = e
            received = signals.received or self.injection.stop_after(pos.step)
            signalled, failed = faults.agree(received is not None, error is not None)
            if failed:
                faults.raise_if_any(error)
            if signalled:
                return self.preempt(pos, signalled, received)
            after = self.frame.advance(pos, self.global_batch)
            self.run_step(pos, after, images, labels)
            if after.epoch != pos.epoch:
                batches = None
            pos = after
        accuracies = self.targets.evaluate(self.net, self.ctx, self.cfg.eval, self.reporter, pos.step)
        return self.summary(pos, verification=accuracies)

    def run_step(self, pos: Position, after: Position, images: np.ndarray, labels: np.ndarray) -> None:
        """Train the step from pos to after, then report, evaluate and save as the config says."""
        cfg, done = self.cfg, after.step
        last = self.frame.finished(after, self.global_batch)
        self.lr = lr = self.schedule(pos.images)
        loss, fault = self.train_step(pos.step, images, labels, lr)
        if fault:
            self.skip_or_stop(done, pos.epoch, fault, loss)
        else:
            self.loss = loss
            if done % cfg.output.log_every == 0 or last:  # a reporting setting: steps of this process
                self.reporter.step(done, pos.epoch, loss, lr, after.images)
        evaluate_now = self.frame.crossed(pos, after, cfg.eval.every) and not last
        save_now = self.frame.crossed(pos, after, cfg.output.checkpoint_every) or last
        if evaluate_now or save_now:
            average_running_stats(self.net)
        if evaluate_now:
            self.targets.evaluate(self.net, self.ctx, cfg.eval, self.reporter, done)
        if save_now:
            self.save(after)

    def train_step(self, step: int, images: np.ndarray, labels: np.ndarray, lr: float) -> Tuple[float, str]:
        """One synchronous step on this rank: (global mean loss, fault).

        fault is "" or what was non-finite, "loss" or "gradient" (the same on every rank); a
        faulty step changes no weight, momentum or batch-norm statistic.
        """
        cfg = self.cfg
        if cfg.model.dropout > 0:
            mx.random.seed(cfg.seed * 1_000_003 + step * dist.size() + dist.rank())
        saved = [p.data().copy() for p in self.stats] if cfg.optim.skip_nonfinite else []
        inject = self.injection.nonfinite_at(step + 1, last_rank=dist.rank() == dist.size() - 1)
        x = mx.nd.array(images, ctx=self.ctx, dtype="float32")
        with autograd.record():
            emb = self.net(x)
        features = emb.detach() * float("nan") if inject == "loss" else emb.detach()
        loss, grad = self.pfc.forward_backward(features, labels)  # host labels: the head all-gathers them
        fault = "" if math.isfinite(loss) else "loss"
        if not fault:
            emb.backward(grad * float("nan") if inject == "grad" else grad)  # grad has emb's dtype
            if not math.isfinite(sum_gradients(self.params, cfg.optim.grad_clip)):
                fault = "gradient"
        if fault:
            for p, value in zip(self.stats, saved):
                p.set_data(value)
            return loss, fault
        self.trainer.set_learning_rate(lr)
        self.trainer.step(1)
        self.pfc.step(lr, momentum=cfg.optim.momentum, wd=cfg.optim.weight_decay)
        return loss, ""

    def skip_or_stop(self, done: int, epoch: int, fault: str, loss: float) -> None:
        """Count a non-finite step; TrainingError once more than optim.skip_nonfinite were met."""
        self.nonfinite_steps.append(done)
        allowed = self.cfg.optim.skip_nonfinite
        what = f"non-finite loss ({loss})" if fault == "loss" else "non-finite backbone gradient"
        if len(self.nonfinite_steps) > allowed:
            kept = (f"the last good checkpoint {self.last_ckpt.name} is kept" if self.last_ckpt
                    else "no checkpoint was saved before it")
            earlier = self.nonfinite_steps[:-1]
            budget = (f" after {len(earlier)} skipped (optim.skip_nonfinite {allowed}, steps "
                      f"{', '.join(map(str, earlier))})" if earlier else "")
            raise TrainingError(f"{what} at step {done}{budget}; {kept}")
        log.warning("skipped step %d: %s; no weight changed (%d of at most %d, optim.skip_nonfinite)",
                    done, what, len(self.nonfinite_steps), allowed)
        self.reporter.skipped(done, epoch, what, len(self.nonfinite_steps))

    # ------------------------------------------------------------ checkpoints
    def data_health(self) -> Dict[str, List[int]]:
        """Collective: the damaged and wrongly sized images all ranks met (pfc_mx.data.health)."""
        return merge(dist.allgather_object(self.loader.state()))

    def save(self, pos: Position) -> None:
        """Collective: checkpoint the state at pos (after pos.step steps)."""
        health = self.data_health()
        state = {**pos.to_state(), "step_in_epoch": pos.offset // self.global_batch, "lr": self.lr,
                 "global_batch": self.global_batch, "base_batch": self.frame.base_batch,
                 "seed": self.cfg.seed, "world_size": dist.size(), "num_classes": self.num_classes,
                 "embedding_size": self.cfg.model.embedding_size, "model": self.cfg.model.name,
                 "sample_rate": self.cfg.partial_fc.sample_rate, "config_hash": self.cfg.digest(),
                 "config": self.cfg.to_dict(), "loss": finite_or_none(self.loss),
                 **health, "corrupt_images": len(health["corrupt_records"]),
                 "corrupt_in_epoch": health["corrupt_in_epoch"] if pos.offset else [],
                 "nonfinite_steps": self.nonfinite_steps}
        self.last_ckpt = checkpoint.save(self.out / checkpoint.CHECKPOINTS, pos.step, state, self.net, self.trainer,
                                         (self.pfc.class_start, self.pfc.weight, self.pfc.momentum),  # no host copy
                                         self.cfg.output.keep, save_backbone)
        self.saved_step = pos.step
        log.info("saved checkpoint %s", self.last_ckpt)

    def preempt(self, pos: Position, signalled: List[int], received: Optional[str]) -> Dict[str, Any]:
        """Collective: save the state at pos (unless a checkpoint holds it) and report."""
        if received:
            log.warning("rank %d received %s", dist.rank(), received)
        if pos.step > self.saved_step:
            average_running_stats(self.net)
            self.save(pos)
        where = f"checkpoint {self.last_ckpt}" if self.last_ckpt else "no checkpoint (no step was done)"
        log.warning("preempted after step %d: a stop signal reached rank(s) %s; %s holds step %d; exit code %d, "
                    "rerun with output.resume=auto to continue", pos.step, ", ".join(map(str, signalled)), where,
                    self.saved_step, faults.EXIT_PREEMPTED)
        return self.summary(pos, preempted=True, signal=received or "")

    # ------------------------------------------------------------ the end
    def summary(self, pos: Position, **extra: Any) -> Dict[str, Any]:
        """Collective: what the run did, the same on every rank (strict JSON: no NaN)."""
        health, data = self.data_health(), self.loader.dataset
        corrupt, wrong = health["corrupt_records"], health["wrong_size"]
        if corrupt:
            log.warning("skipped %d corrupt image(s) of %s (records %s)", len(corrupt), data.path,
                        describe(data, corrupt))
        if wrong:
            policy = self.cfg.data.on_wrong_size
            log.warning("%s %d image(s) of %s that are not %dx%dx3 (records %s; data.on_wrong_size %s)",
                        "resized" if policy == "resize" else "skipped", len(wrong), data.path, IMAGE_SIZE, IMAGE_SIZE,
                        describe(data, wrong), policy)
        summary = {"steps": pos.step, "images": pos.images, "epochs": pos.epoch + pos.offset / self.frame.num_images,
                   "final_loss": finite_or_none(self.loss), "checkpoint": str(self.last_ckpt or ""),
                   "verification": {}, "best": self.targets.best, "output": str(self.out),
                   "corrupt_images": len(corrupt), "wrong_size_images": len(wrong),
                   "nonfinite_steps": list(self.nonfinite_steps),
                   "preempted": False}
        summary.update(extra)
        return summary

    def close(self, plot: bool = True) -> None:
        """Stop the loader; close the reporter, drawing curves.png on rank 0 when plot."""
        self.loader.close()
        self.reporter.close(self.out / "curves.png" if plot and dist.rank() == 0 else None)
