"""The training loop: config → data → backbone → PartialFC → SGD, with checkpoints and reports.

One step on W ranks equals one step on one rank holding the whole global batch:
PartialFC returns the gradient of the global mean loss w.r.t. this rank's
embeddings, so the backbone gradients of the ranks are summed (not averaged).

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
from mxnet import autograd, gluon

import symbols
from pfc_mx import checkpoint, dist
from pfc_mx.config import Config, check_data_paths, save_config
from pfc_mx.data import RecordDataset, RecordLoader
from pfc_mx.errors import ConfigError, TrainingError, first_line
from pfc_mx.head import PartialFC
from pfc_mx.strict_json import finite_or_none
from pfc_mx.train import faults, pretrained
from pfc_mx.train.progress import Frame, Position, position_from_state
from pfc_mx.train.reporting import Reporter, setup_logging
from pfc_mx.train.resume import resume
from pfc_mx.train.run_lock import RunLock
from pfc_mx.train.schedule import scaled_base_lr, schedule_by_images
from pfc_mx.train.verification import VerificationTargets
from symbols.legacy import save_backbone

log = logging.getLogger("pfc_mx.train")

Batch = Tuple[np.ndarray, np.ndarray]


def prepare_output(cfg: Config) -> Tuple[Path, Optional[RunLock]]:
    """Create the output folder and take its run lock (rank 0); check every rank can see and write it.

    Returns (folder, the lock on rank 0 / None elsewhere). ConfigError on every rank when the
    folder is not writable or another live job holds it (pfc_mx.train.run_lock).
    """
    out = Path(cfg.output.dir)
    error = ""
    lock: Optional[RunLock] = None
    if dist.rank() == 0:
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".write-test"
            probe.write_text("ok")
            probe.unlink()
            lock = RunLock(out).acquire()
        except OSError as e:
            error = f"output.dir {out} is not writable: {e.strerror or e}"
        except ConfigError as e:
            error = str(e)
    error = dist.broadcast_object(error, root=0)
    if error:
        raise ConfigError(error)
    return out, lock


def build_backbone(cfg: Config, ctx: mx.Context) -> gluon.HybridBlock:
    m = cfg.model
    fp16 = m.fp16 and ctx.device_type == "gpu"
    if m.fp16 and not fp16:
        log.warning("model.fp16 needs a GPU; training in float32 on %s", ctx)
    net = symbols.get_model(m.name, embedding_size=m.embedding_size, dropout=m.dropout,
                            bn_mom=m.bn_mom, bn_eps=m.bn_eps, fp16=fp16)
    mx.random.seed(cfg.seed)
    net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2), ctx=ctx)
    net.hybridize(static_alloc=True, static_shape=True)
    return net


def sum_gradients(params: List[gluon.Parameter], grad_clip: float) -> float:
    """Sum backbone gradients over ranks in place; return their global L2 norm, clip to grad_clip if > 0.

    The norm is the same on every rank (it is taken after the sum), so a non-finite norm stops
    or skips the step on all ranks alike. One host sync per step.
    """
    grads = [p.grad() for p in params]
    if dist.size() > 1:
        for g, s in zip(grads, dist.grouped_allreduce(grads, op="sum", name="pfc_mx.backbone_grads")):
            s.copyto(g)
    norm = math.sqrt(float(mx.nd.multi_sum_sq(*grads, num_arrays=len(grads)).sum().asscalar()))
    if grad_clip > 0 and math.isfinite(norm) and norm > grad_clip:
        for g in grads:
            g *= grad_clip / norm
    return norm


def running_stats(net: gluon.HybridBlock) -> List[gluon.Parameter]:
    """The batch-norm running means and variances (parameters without gradient)."""
    return [p for p in net.collect_params().values() if p.grad_req == "null"]


def average_running_stats(net: gluon.HybridBlock) -> None:
    """Set batch-norm running means and variances to their average over ranks.

    Each rank updates them from its own batches; averaging before an evaluation or a
    checkpoint makes every rank (and the saved backbone) use the same statistics.
    """
    if dist.size() == 1:
        return
    stats = running_stats(net)
    values = [mx.nd.array(p.data().asnumpy(), ctx=p.data().context) for p in stats]
    for p, total in zip(stats, dist.grouped_allreduce(values, op="sum", name="pfc_mx.bn_stats")):
        p.set_data(total / dist.size())


def train(cfg: Config) -> Dict[str, Any]:
    """Run (or resume) training as described by cfg on this rank; return a summary on every rank.

    summary["preempted"] is True when a SIGTERM/SIGINT stopped the run after a complete
    checkpoint (train_horovod.py then exits with faults.EXIT_PREEMPTED). When another rank is
    lost, this process ends with faults.EXIT_RANK_LOST instead of returning.
    """
    dist.init()
    check_data_paths(cfg)
    out, lock = prepare_output(cfg)
    setup_logging(out)
    if lock is not None and lock.took_over:
        log.warning(lock.took_over)
    monitor = faults.RankMonitor(out / "logs" / "heartbeat")
    run: Optional[Run] = None
    preempted = False
    with faults.StopSignals() as signals:  # also covers the closing work: a launcher's SIGTERM waits for it
        try:
            monitor.start()
            run = Run(cfg, out)
            summary = run.execute(signals)
            preempted = summary["preempted"]
            if preempted:
                signals.hold()
            dist.barrier()  # no rank leaves while another one still needs it in a collective
        except mx.base.MXNetError as e:
            if faults.peer_lost(e):
                monitor.fail(f"a collective failed ({first_line(e).split('. ')[0]})")
            raise
        finally:
            monitor.stop()
            if run is not None:
                run.close(plot=not preempted)  # preempted: a launcher's grace period is short, the resume plots
            if lock is not None:
                lock.release()
    if preempted:
        log.info("rank %d stops after the preemption checkpoint (exit code %d)", dist.rank(), faults.EXIT_PREEMPTED)
    return summary


class Run:
    """One rank's training run: model, optimizer, data, and where the run stands (a Position)."""

    def __init__(self, cfg: Config, out: Path) -> None:
        self.loader: Optional[RecordLoader] = None
        try:
            self._setup(cfg, out)
        except BaseException:
            if self.loader is not None:   # its worker processes would keep this process alive
                self.loader.close()
            raise

    def _setup(self, cfg: Config, out: Path) -> None:
        self.cfg, self.out = cfg, out
        self.ctx = ctx = dist.context()
        world, rank = dist.size(), dist.rank()
        if rank == 0:
            save_config(cfg, out / "config.yaml")
        dataset = RecordDataset(cfg.data.rec)
        self.num_classes = cfg.data.num_classes or dataset.num_classes
        if self.num_classes < dataset.num_classes:
            raise ConfigError(f"data.num_classes = {self.num_classes} but {cfg.data.rec} has "
                              f"{dataset.num_classes} classes")
        self.loader = RecordLoader(dataset, cfg.data.batch_size, rank=rank, world_size=world, seed=cfg.seed,
                                   num_workers=cfg.data.num_workers, mirror=cfg.data.mirror,
                                   color_jitter=cfg.data.color_jitter,
                                   max_corrupt_fraction=cfg.data.max_corrupt_fraction,
                                   on_wrong_size=cfg.data.on_wrong_size)
        self.global_batch = self.loader.sampler.global_batch
        if self.loader.batches_per_epoch == 0:
            raise ConfigError(f"{dataset.num_images} images are too few for {world} ranks × batch "
                              f"{cfg.data.batch_size}")
        self.net = build_backbone(cfg, ctx)
        self.net(mx.nd.zeros((cfg.data.batch_size, 3, 112, 112), ctx=ctx))  # materialise shapes
        self.params = [p for p in self.net.collect_params().values() if p.grad_req != "null"]
        self.trainer = gluon.Trainer(self.net.collect_params(), "sgd",
                                     {"learning_rate": 0.0, "momentum": cfg.optim.momentum,
                                      "wd": cfg.optim.weight_decay, "multi_precision": cfg.model.fp16,
                                      "lazy_update": False},
                                     kvstore=None)
        self.pfc = PartialFC(self.num_classes, cfg.model.embedding_size, margin=cfg.loss.margins,
                             scale=cfg.loss.scale, sample_rate=cfg.partial_fc.sample_rate,
                             interclass_filtering_threshold=cfg.loss.interclass_filtering_threshold,
                             ctx=ctx, seed=cfg.seed, centers_on=cfg.partial_fc.centers_on,
                             kernels=cfg.partial_fc.kernels)

        state, self.last_ckpt = resume(cfg, out, self.net, self.trainer, self.pfc, self.num_classes)
        if self.last_ckpt is None and cfg.model.pretrained:     # fine-tuning (pfc_mx/train/pretrained.py)
            pretrained.initialise(cfg, self.net, self.pfc, self.num_classes)
        # the run's unit: the global batch of its first start (pfc_mx.train.progress)
        base_batch = int(state.get("base_batch") or int(state.get("world_size", world)) * cfg.data.batch_size)
        self.base_lr = scaled_base_lr(cfg.optim, base_batch)
        self.frame = Frame(dataset.num_images, cfg.optim.epochs, base_batch, cfg.optim.max_steps * base_batch)
        self.schedule = schedule_by_images(cfg.optim, self.base_lr, self.frame)
        saved = position_from_state(state, cfg.data.batch_size, dataset.num_images)
        self.start = self.frame.start(saved, self.global_batch)
        self.saved_step = saved.step  # the step of the newest checkpoint (0: nothing to save yet)
        self.total_steps = self.start.step + self.frame.steps_left(self.start, self.global_batch)
        self.nonfinite_steps: List[int] = [int(s) for s in state.get("nonfinite_steps", [])]
        # corrupt records met before the checkpoint: the run's count, and the current epoch's budget
        self.loader.corrupt.update(int(i) for i in state.get("corrupt_records", []))
        self.resumed_corrupt = [int(i) for i in state.get("corrupt_in_epoch", [])] if self.start.offset else []
        self.inject, self.stop_at = faults.injected_nonfinite(), faults.injected_stop()
        self.loss = float("nan")
        self.lr = float(state.get("lr", 0.0))
        dist.broadcast_parameters(self.net.collect_params(), root=0)
        log.info("training %s on %d rank(s) (%s): %d classes, %d images, global batch %d, %d steps/epoch, "
                 "%d steps, lr %.4g, sample rate %.3g", cfg.model.name, world, ctx, self.num_classes,
                 dataset.num_images, self.global_batch, self.loader.batches_per_epoch, self.total_steps,
                 self.base_lr, cfg.partial_fc.sample_rate)
        if self.last_ckpt is not None:
            self._log_resume(state)
        self.targets = VerificationTargets.find(Path(cfg.data.rec), cfg.eval.targets)
        self.reporter = Reporter(out, self.total_steps, self.global_batch, self.start.step,
                                 tensorboard=cfg.output.tensorboard)

    def _log_resume(self, state: Dict[str, Any]) -> None:
        saved_world, pos = state.get("world_size"), self.start
        change = ""
        if self.frame.base_batch != self.global_batch or saved_world != dist.size():
            change = (f"; saved on {saved_world} rank(s), now {dist.size()}: global batch {self.global_batch} "
                      f"(the run's unit is {self.frame.base_batch} images a step)")
        log.info("resumed from %s at step %d (%d images seen, epoch %d, image %d of its order)%s; "
                 "%d steps left, lr %.5g", self.last_ckpt, int(state["step"]), pos.images, pos.epoch, pos.offset,
                 change, self.total_steps - pos.step, self.schedule(pos.images))

    # ------------------------------------------------------------------ the loop
    def execute(self, signals: faults.StopSignals) -> Dict[str, Any]:
        """Train to the end, or to the step boundary where a stop signal was agreed on."""
        batches: Optional[Iterator[Batch]] = None
        pos = self.start
        while not self.frame.finished(pos, self.global_batch):
            error: Optional[BaseException] = None
            try:
                if batches is None:
                    met = self.resumed_corrupt if pos == self.start else []
                    batches = self.loader.epoch(pos.epoch, met=met, offset=pos.offset)
                images, labels = next(batches)
            except Exception as e:  # raised below on every rank, so no rank waits in a collective
                error = e
            received = signals.received or (f"{faults.INJECT_STOP}={self.stop_at}" if self.stop_at == pos.step > 0
                                            else None)
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
        stats = running_stats(self.net)
        saved = [p.data().copy() for p in stats] if cfg.optim.skip_nonfinite else []
        inject = self.inject.get(step + 1) if dist.rank() == dist.size() - 1 else None
        x = mx.nd.array(images, ctx=self.ctx, dtype="float32")
        y = mx.nd.array(labels, ctx=self.ctx, dtype="int32")
        with autograd.record():
            emb = self.net(x)
        features = emb.detach() * float("nan") if inject == "loss" else emb.detach()
        loss, grad = self.pfc.forward_backward(features, y)
        fault = "" if math.isfinite(loss) else "loss"
        if not fault:
            emb.backward((grad * float("nan") if inject == "grad" else grad).astype(emb.dtype))
            if not math.isfinite(sum_gradients(self.params, cfg.optim.grad_clip)):
                fault = "gradient"
        if fault:
            for p, value in zip(stats, saved):
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
    def corrupt_images(self) -> Tuple[List[int], List[int]]:
        """Collective: the distinct corrupt images all ranks skipped so far, and those of the current
        epoch (image indices)."""
        gathered = dist.allgather_object((sorted(self.loader.corrupt), self.loader.epoch_corrupt))
        return (sorted(set().union(*(run for run, _ in gathered))),
                sorted(set().union(*(now for _, now in gathered))))

    def save(self, pos: Position) -> None:
        """Collective: checkpoint the state at pos (after pos.step steps)."""
        corrupt, in_epoch = self.corrupt_images()
        state = {**pos.to_state(), "step_in_epoch": pos.offset // self.global_batch, "lr": self.lr,
                 "global_batch": self.global_batch, "base_batch": self.frame.base_batch,
                 "seed": self.cfg.seed, "world_size": dist.size(), "num_classes": self.num_classes,
                 "embedding_size": self.cfg.model.embedding_size, "model": self.cfg.model.name,
                 "sample_rate": self.cfg.partial_fc.sample_rate, "config_hash": self.cfg.digest(),
                 "config": self.cfg.to_dict(), "loss": finite_or_none(self.loss),
                 "corrupt_images": len(corrupt), "corrupt_records": corrupt,
                 "corrupt_in_epoch": in_epoch if pos.offset else [], "nonfinite_steps": self.nonfinite_steps}
        self.last_ckpt = checkpoint.save(self.out / "checkpoints", pos.step, state, self.net, self.trainer,
                                         self.pfc.get_shard(), self.cfg.output.keep, save_backbone)
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
        corrupt, _ = self.corrupt_images()
        if corrupt:
            keys = ", ".join(str(self.loader.dataset.keys[i]) for i in corrupt[:10])
            log.warning("skipped %d corrupt image(s) of %s (records %s%s)", len(corrupt), self.loader.dataset.path,
                        keys, ", ..." if len(corrupt) > 10 else "")
        wrong = sorted(set().union(*dist.allgather_object(sorted(self.loader.wrong_size))))
        if wrong:
            keys = ", ".join(str(self.loader.dataset.keys[i]) for i in wrong[:10])
            log.warning("%s %d image(s) of %s that are not 112x112x3 (records %s%s; data.on_wrong_size %s)",
                        "resized" if self.cfg.data.on_wrong_size == "resize" else "skipped", len(wrong),
                        self.loader.dataset.path, keys, ", ..." if len(wrong) > 10 else "", self.cfg.data.on_wrong_size)
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
