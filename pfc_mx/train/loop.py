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
from pfc_mx.partial_fc import PartialFC
from pfc_mx.train import faults
from pfc_mx.train.reporting import Reporter, setup_logging
from pfc_mx.train.schedule import make_schedule, scaled_base_lr
from pfc_mx.train.verification import VerificationTargets
from symbols.legacy import load_backbone, save_backbone

log = logging.getLogger("pfc_mx.train")

Batch = Tuple[np.ndarray, np.ndarray]


def prepare_output(cfg: Config) -> Path:
    """Create the output folder (rank 0) and check every rank can see and write it."""
    out = Path(cfg.output.dir)
    error = ""
    if dist.rank() == 0:
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as e:
            error = f"output.dir {out} is not writable: {e.strerror or e}"
    error = dist.broadcast_object(error, root=0)
    if error:
        raise ConfigError(error)
    return out


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
    out = prepare_output(cfg)
    setup_logging(out)
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
    if preempted:
        log.info("rank %d stops after the preemption checkpoint (exit code %d)", dist.rank(), faults.EXIT_PREEMPTED)
    return summary


class Run:
    """One rank's training run: model, optimizer, data, and where the run stands."""

    def __init__(self, cfg: Config, out: Path) -> None:
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
        self.steps_per_epoch = self.loader.batches_per_epoch
        if self.steps_per_epoch == 0:
            raise ConfigError(f"{dataset.num_images} images are too few for {world} ranks × batch "
                              f"{cfg.data.batch_size}")
        self.total_steps = cfg.optim.max_steps or cfg.optim.epochs * self.steps_per_epoch
        global_batch = cfg.data.batch_size * world
        base_lr = scaled_base_lr(cfg.optim, global_batch)
        self.schedule = make_schedule(cfg.optim, base_lr, self.steps_per_epoch, self.total_steps)

        self.net = build_backbone(cfg, ctx)
        self.net(mx.nd.zeros((cfg.data.batch_size, 3, 112, 112), ctx=ctx))  # materialise shapes
        self.params = [p for p in self.net.collect_params().values() if p.grad_req != "null"]
        self.trainer = gluon.Trainer(self.net.collect_params(), "sgd",
                                     {"learning_rate": base_lr, "momentum": cfg.optim.momentum,
                                      "wd": cfg.optim.weight_decay, "multi_precision": cfg.model.fp16,
                                      "lazy_update": False},
                                     kvstore=None)
        self.pfc = PartialFC(self.num_classes, cfg.model.embedding_size, margin=cfg.loss.margins,
                             scale=cfg.loss.scale, sample_rate=cfg.partial_fc.sample_rate,
                             interclass_filtering_threshold=cfg.loss.interclass_filtering_threshold,
                             ctx=ctx, seed=cfg.seed, centers_on=cfg.partial_fc.centers_on,
                             kernels=cfg.partial_fc.kernels)

        self.start_step, state, self.last_ckpt = resume(cfg, out, self.net, self.trainer, self.pfc,
                                                        self.num_classes)
        self.saved_step = self.start_step  # the step of the newest checkpoint (0: nothing to save yet)
        self.nonfinite_steps: List[int] = [int(s) for s in state.get("nonfinite_steps", [])]
        # corrupt records met before the checkpoint: the run's count, and the current epoch's budget
        self.loader.corrupt.update(int(i) for i in state.get("corrupt_records", []))
        epoch, in_epoch = divmod(self.start_step, self.steps_per_epoch)
        same_epoch = in_epoch > 0 and state.get("epoch") == epoch and state.get("world_size") == world
        self.resumed_corrupt = [int(i) for i in state.get("corrupt_in_epoch", [])] if same_epoch else []
        self.inject = faults.injected_nonfinite()
        self.loss = float("nan")
        dist.broadcast_parameters(self.net.collect_params(), root=0)
        log.info("training %s on %d rank(s) (%s): %d classes, %d images, global batch %d, %d steps/epoch, "
                 "%d steps, lr %.4g, sample rate %.3g", cfg.model.name, world, ctx, self.num_classes,
                 dataset.num_images, global_batch, self.steps_per_epoch, self.total_steps, base_lr,
                 cfg.partial_fc.sample_rate)
        self.targets = VerificationTargets.find(Path(cfg.data.rec), cfg.eval.targets)
        self.reporter = Reporter(out, self.total_steps, global_batch, self.start_step,
                                 tensorboard=cfg.output.tensorboard)

    # ------------------------------------------------------------------ the loop
    def execute(self, signals: faults.StopSignals) -> Dict[str, Any]:
        """Train to the end, or to the step boundary where a stop signal was agreed on."""
        batches: Optional[Iterator[Batch]] = None
        for step in range(self.start_step, self.total_steps):
            epoch, in_epoch = divmod(step, self.steps_per_epoch)
            error: Optional[BaseException] = None
            try:
                if batches is None or in_epoch == 0:
                    met = self.resumed_corrupt if step == self.start_step else []
                    batches = self.loader.epoch(epoch, start_step=in_epoch, met=met)
                images, labels = next(batches)
            except Exception as e:  # raised below on every rank, so no rank waits in a collective
                error = e
            signalled, failed = faults.agree(signals.received is not None, error is not None)
            if failed:
                faults.raise_if_any(error)
            if signalled:
                return self.preempt(step, signalled, signals.received)
            self.run_step(step, epoch, images, labels)
        accuracies = self.targets.evaluate(self.net, self.ctx, self.cfg.eval, self.reporter, self.total_steps)
        return self.summary(self.total_steps, verification=accuracies)

    def run_step(self, step: int, epoch: int, images: np.ndarray, labels: np.ndarray) -> None:
        """Train step `step` (0-based), then report, evaluate and save as the config says."""
        cfg, done = self.cfg, step + 1
        lr = self.schedule(step)
        loss, fault = self.train_step(step, images, labels, lr)
        if fault:
            self.skip_or_stop(done, epoch, fault, loss)
        else:
            self.loss = loss
            if done % cfg.output.log_every == 0 or done == self.total_steps:
                self.reporter.step(done, epoch, loss, lr)
        evaluate_now = bool(cfg.eval.every) and done % cfg.eval.every == 0 and done != self.total_steps
        save_now = done % cfg.output.checkpoint_every == 0 or done == self.total_steps
        if evaluate_now or save_now:
            average_running_stats(self.net)
        if evaluate_now:
            self.targets.evaluate(self.net, self.ctx, cfg.eval, self.reporter, done)
        if save_now:
            self.save(done, lr)

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

    def save(self, done: int, lr: float) -> None:
        """Collective: checkpoint the state after `done` steps."""
        corrupt, in_epoch = self.corrupt_images()
        state = {"step": done, "epoch": done // self.steps_per_epoch, "step_in_epoch": done % self.steps_per_epoch,
                 "lr": lr, "seed": self.cfg.seed, "world_size": dist.size(), "num_classes": self.num_classes,
                 "embedding_size": self.cfg.model.embedding_size, "model": self.cfg.model.name,
                 "sample_rate": self.cfg.partial_fc.sample_rate, "config_hash": self.cfg.digest(),
                 "loss": self.loss, "corrupt_images": len(corrupt), "corrupt_records": corrupt,
                 "corrupt_in_epoch": in_epoch if done % self.steps_per_epoch else [],
                 "nonfinite_steps": self.nonfinite_steps}
        self.last_ckpt = checkpoint.save(self.out / "checkpoints", done, state, self.net, self.trainer,
                                         self.pfc.get_shard(), self.cfg.output.keep, save_backbone)
        self.saved_step = done
        log.info("saved checkpoint %s", self.last_ckpt)

    def preempt(self, step: int, signalled: List[int], received: Optional[str]) -> Dict[str, Any]:
        """Collective: save the state after `step` steps (unless a checkpoint holds it) and report."""
        if received:
            log.warning("rank %d received %s", dist.rank(), received)
        if step > self.saved_step:
            average_running_stats(self.net)
            self.save(step, self.schedule(step - 1))
        where = f"checkpoint {self.last_ckpt}" if self.last_ckpt else "no checkpoint (no step was done)"
        log.warning("preempted after step %d: a stop signal reached rank(s) %s; %s holds step %d; exit code %d, "
                    "rerun with output.resume=auto to continue", step, ", ".join(map(str, signalled)), where,
                    self.saved_step, faults.EXIT_PREEMPTED)
        return self.summary(step, preempted=True, signal=received or "")

    # ------------------------------------------------------------ the end
    def summary(self, steps: int, **extra: Any) -> Dict[str, Any]:
        """Collective: what the run did, the same on every rank."""
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
        summary = {"steps": steps, "final_loss": self.loss, "checkpoint": str(self.last_ckpt or ""),
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


def resume(cfg: Config, out: Path, net: gluon.HybridBlock, trainer: gluon.Trainer, pfc: PartialFC,
           num_classes: int) -> Tuple[int, Dict[str, Any], Optional[Path]]:
    """Load the checkpoint output.resume names: (step to continue from, its state, its folder).

    (0, {}, None) for a fresh start. Rank 0 chooses and verifies the checkpoint (see
    _choose_checkpoint); every rank then loads its part. An error on any rank stops every rank.
    """
    choice: Tuple[str, Dict[str, Any]] = ("", {})
    error: Optional[BaseException] = None
    if dist.rank() == 0:
        try:
            choice = _choose_checkpoint(cfg, out / "checkpoints", num_classes)
        except Exception as e:  # raised on every rank below
            error = e
    faults.raise_if_any(error)
    path, state = dist.broadcast_object(choice, root=0)
    if not path:
        return 0, {}, None
    folder = Path(path)
    try:
        _load(folder, cfg, net, trainer, pfc)
    except Exception as e:
        error = e
    faults.raise_if_any(error)
    step = int(state["step"])
    pfc.set_step(step)
    if state.get("world_size") != dist.size():
        log.info("elastic resume: checkpoint saved on %s rank(s), continuing on %d", state.get("world_size"),
                 dist.size())
    log.info("resumed from %s at step %d", folder, step)
    return step, state, folder


def _choose_checkpoint(cfg: Config, root: Path, num_classes: int) -> Tuple[str, Dict[str, Any]]:
    """Rank 0's part of resume: (folder, its verified state), or ('', {}) for a fresh start.

    `auto` removes folders of interrupted saves and takes the newest checkpoint that verifies,
    saying which newer ones it skipped and why; `none` starts fresh; anything else is a folder.
    Step folders newer than the chosen step (damaged ones, or a later history) are moved into
    checkpoints/set-aside/, so that `auto` never picks them later and pruning never counts them.
    """
    folder: Optional[Path] = None
    state: Dict[str, Any] = {}
    if cfg.output.resume == "auto":
        checkpoint.remove_incomplete(root)
        found = checkpoint.find_resumable(root)
        if found is not None:
            folder, state = found.path, found.state
            if found.skipped:
                log.warning("falling back to %s: newer checkpoint(s) %s did not verify", found.path.name,
                            ", ".join(p.name for p, _ in found.skipped))
        elif checkpoint.step_folders(root):
            log.warning("no checkpoint in %s verifies: starting from step 0", root)
    elif cfg.output.resume != "none":
        folder = Path(cfg.output.resume)
        state = checkpoint.verify(folder)
    if folder is not None:
        for key, have in (("num_classes", num_classes), ("embedding_size", cfg.model.embedding_size),
                          ("model", cfg.model.name)):
            if state.get(key) != have:
                raise ConfigError(f"cannot resume from {folder}: it has {key} = {state.get(key)!r}, "
                                  f"the config has {have!r}")
    if checkpoint.set_aside_newer(root, int(state.get("step", 0))):
        remaining = checkpoint.step_folders(root)
        checkpoint.point_latest(root, remaining[-1][1] if remaining else None)
    return (str(folder) if folder else "", state)


def _load(folder: Path, cfg: Config, net: gluon.HybridBlock, trainer: gluon.Trainer, pfc: PartialFC) -> None:
    """This rank's part of resume: backbone, backbone optimizer state and its center rows from folder."""
    loaded = load_backbone(str(folder / checkpoint.BACKBONE_PREFIX), cfg.model.name,
                           embedding_size=cfg.model.embedding_size, dropout=cfg.model.dropout,
                           bn_mom=cfg.model.bn_mom, bn_eps=cfg.model.bn_eps)
    # both nets come from get_model with the same options: their parameters line up in order
    for p, q in zip(net.collect_params().values(), loaded.collect_params().values()):
        p.set_data(q.data())
    checkpoint.load_trainer_states(folder, trainer)
    weight, momentum = checkpoint.load_centers(folder, pfc.class_start, pfc.num_local, cfg.model.embedding_size)
    pfc.set_rows(pfc.class_start, weight, momentum)
