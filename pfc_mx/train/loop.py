"""The training loop: config → data → backbone → PartialFC → SGD, with checkpoints and reports.

One step on W ranks equals one step on one rank holding the whole global batch:
PartialFC returns the gradient of the global mean loss w.r.t. this rank's
embeddings, so the backbone gradients of the ranks are summed (not averaged).
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

import symbols
from pfc_mx import checkpoint, dist
from pfc_mx.config import Config, check_data_paths, save_config
from pfc_mx.data import RecordDataset, RecordLoader
from pfc_mx.errors import ConfigError, TrainingError
from pfc_mx.partial_fc import PartialFC
from pfc_mx.train.reporting import Reporter, setup_logging
from pfc_mx.train.schedule import make_schedule, scaled_base_lr
from pfc_mx.train.verification import VerificationTargets
from symbols.legacy import load_backbone, save_backbone

log = logging.getLogger("pfc_mx.train")


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
    """Sum backbone gradients over ranks in place; clip to grad_clip (global L2) if > 0.

    Returns the global gradient norm when clipping (else nan: not computed, no host sync).
    """
    grads = [p.grad() for p in params]
    if dist.size() > 1:
        for g, s in zip(grads, dist.grouped_allreduce(grads, op="sum", name="pfc_mx.backbone_grads")):
            s.copyto(g)
    if grad_clip <= 0:
        return float("nan")
    norm = math.sqrt(sum(float((g.astype("float32") ** 2).sum().asscalar()) for g in grads))
    if math.isfinite(norm) and norm > grad_clip:
        for g in grads:
            g *= grad_clip / norm
    return norm


def average_running_stats(net: gluon.HybridBlock) -> None:
    """Set batch-norm running means and variances to their average over ranks.

    Each rank updates them from its own batches; averaging before an evaluation or a
    checkpoint makes every rank (and the saved backbone) use the same statistics.
    """
    if dist.size() == 1:
        return
    stats = [p for p in net.collect_params().values() if p.grad_req == "null"]
    values = [mx.nd.array(p.data().asnumpy(), ctx=p.data().context) for p in stats]
    for p, total in zip(stats, dist.grouped_allreduce(values, op="sum", name="pfc_mx.bn_stats")):
        p.set_data(total / dist.size())


def train(cfg: Config) -> Dict[str, Any]:
    """Run (or resume) training as described by cfg on this rank; return a summary on every rank."""
    dist.init()
    check_data_paths(cfg)
    out = prepare_output(cfg)
    setup_logging(out)
    ctx = dist.context()
    world, rank = dist.size(), dist.rank()
    if rank == 0:
        save_config(cfg, out / "config.yaml")
    dataset = RecordDataset(cfg.data.rec)
    num_classes = cfg.data.num_classes or dataset.num_classes
    if num_classes < dataset.num_classes:
        raise ConfigError(f"data.num_classes = {num_classes} but {cfg.data.rec} has {dataset.num_classes} classes")
    loader = RecordLoader(dataset, cfg.data.batch_size, rank=rank, world_size=world, seed=cfg.seed,
                          num_workers=cfg.data.num_workers, mirror=cfg.data.mirror,
                          color_jitter=cfg.data.color_jitter, max_corrupt_fraction=cfg.data.max_corrupt_fraction)
    steps_per_epoch = loader.batches_per_epoch
    if steps_per_epoch == 0:
        raise ConfigError(f"{dataset.num_images} images are too few for {world} ranks × batch {cfg.data.batch_size}")
    total_steps = cfg.optim.max_steps or cfg.optim.epochs * steps_per_epoch
    global_batch = cfg.data.batch_size * world
    base_lr = scaled_base_lr(cfg.optim, global_batch)
    schedule = make_schedule(cfg.optim, base_lr, steps_per_epoch, total_steps)

    net = build_backbone(cfg, ctx)
    net(mx.nd.zeros((cfg.data.batch_size, 3, 112, 112), ctx=ctx))  # materialise shapes
    params = [p for p in net.collect_params().values() if p.grad_req != "null"]
    trainer = gluon.Trainer(net.collect_params(), "sgd",
                            {"learning_rate": base_lr, "momentum": cfg.optim.momentum,
                             "wd": cfg.optim.weight_decay, "multi_precision": cfg.model.fp16,
                             "lazy_update": False},
                            kvstore=None)
    pfc = PartialFC(num_classes, cfg.model.embedding_size, margin=cfg.loss.margins, scale=cfg.loss.scale,
                    sample_rate=cfg.partial_fc.sample_rate,
                    interclass_filtering_threshold=cfg.loss.interclass_filtering_threshold,
                    ctx=ctx, seed=cfg.seed, centers_on=cfg.partial_fc.centers_on)

    start_step = resume(cfg, out, net, trainer, pfc, num_classes)
    dist.broadcast_parameters(net.collect_params(), root=0)
    log.info("training %s on %d rank(s) (%s): %d classes, %d images, global batch %d, %d steps/epoch, "
             "%d steps, lr %.4g, sample rate %.3g", cfg.model.name, world, ctx, num_classes, dataset.num_images,
             global_batch, steps_per_epoch, total_steps, base_lr, cfg.partial_fc.sample_rate)

    targets = VerificationTargets.find(Path(cfg.data.rec), cfg.eval.targets)
    reporter = Reporter(out, total_steps, global_batch, start_step, tensorboard=cfg.output.tensorboard)
    ckpt_root = out / "checkpoints"
    last_ckpt: Optional[Path] = None
    loss = float("nan")
    batches = None
    try:
        for step in range(start_step, total_steps):
            epoch, in_epoch = divmod(step, steps_per_epoch)
            if batches is None or in_epoch == 0:
                batches = loader.epoch(epoch, start_step=in_epoch)
            images, labels = next(batches)
            lr = schedule(step)
            loss = train_step(net, pfc, trainer, params, images, labels, lr, cfg, ctx, step)
            done = step + 1
            if done % cfg.output.log_every == 0 or done == total_steps:
                reporter.step(done, epoch, loss, lr)
            evaluate_now = bool(cfg.eval.every) and done % cfg.eval.every == 0 and done != total_steps
            save_now = done % cfg.output.checkpoint_every == 0 or done == total_steps
            if evaluate_now or save_now:
                average_running_stats(net)
            if evaluate_now:
                targets.evaluate(net, ctx, cfg.eval, reporter, done)
            if save_now:
                state = {"step": done, "epoch": done // steps_per_epoch, "step_in_epoch": done % steps_per_epoch,
                         "lr": lr, "seed": cfg.seed, "world_size": world, "num_classes": num_classes,
                         "embedding_size": cfg.model.embedding_size, "model": cfg.model.name,
                         "sample_rate": cfg.partial_fc.sample_rate, "config_hash": cfg.digest(),
                         "loss": loss, "corrupt_images": loader.corrupt_count}
                last_ckpt = checkpoint.save(ckpt_root, done, state, net, trainer, pfc.get_shard(),
                                            cfg.output.keep, save_backbone)
                log.info("saved checkpoint %s", last_ckpt)
        accuracies = targets.evaluate(net, ctx, cfg.eval, reporter, total_steps)
    finally:
        loader.close()
        reporter.close(out / "curves.png" if rank == 0 else None)
    return {"steps": total_steps, "final_loss": loss, "checkpoint": str(last_ckpt or ""),
            "verification": accuracies, "best": targets.best, "output": str(out),
            "corrupt_images": loader.corrupt_count}


def train_step(net: gluon.HybridBlock, pfc: PartialFC, trainer: gluon.Trainer, params: List[gluon.Parameter],
               images: np.ndarray, labels: np.ndarray, lr: float, cfg: Config, ctx: mx.Context,
               step: int) -> float:
    """One synchronous step on this rank; returns the global mean loss (same on all ranks)."""
    if cfg.model.dropout > 0:
        mx.random.seed(cfg.seed * 1_000_003 + step * dist.size() + dist.rank())
    x = mx.nd.array(images, ctx=ctx, dtype="float32")
    y = mx.nd.array(labels, ctx=ctx, dtype="int32")
    with autograd.record():
        emb = net(x)
    loss, grad = pfc.forward_backward(emb.detach(), y)
    if not math.isfinite(loss):
        raise TrainingError(f"non-finite loss ({loss}) at step {step + 1}; the last good checkpoint is kept")
    emb.backward(grad.astype(emb.dtype))
    norm = sum_gradients(params, cfg.optim.grad_clip)
    if cfg.optim.grad_clip > 0 and not math.isfinite(norm):
        raise TrainingError(f"non-finite backbone gradient at step {step + 1}; the last good checkpoint is kept")
    trainer.set_learning_rate(lr)
    trainer.step(1)
    pfc.step(lr, momentum=cfg.optim.momentum, wd=cfg.optim.weight_decay)
    return loss


def resume(cfg: Config, out: Path, net: gluon.HybridBlock, trainer: gluon.Trainer, pfc: PartialFC,
           num_classes: int) -> int:
    """Load the checkpoint named by output.resume; return the step to continue from (0: fresh start)."""
    if cfg.output.resume == "none":
        return 0
    if cfg.output.resume == "auto":
        found = checkpoint.find_resumable(out / "checkpoints") if dist.rank() == 0 else None
        path = dist.broadcast_object(str(found.path) if found else "", root=0)
        if not path:
            return 0
    else:
        path = cfg.output.resume
    folder = Path(path)
    state = checkpoint.verify(folder)
    for key, have in (("num_classes", num_classes), ("embedding_size", cfg.model.embedding_size),
                      ("model", cfg.model.name)):
        if state.get(key) != have:
            raise ConfigError(f"cannot resume from {folder}: it has {key} = {state.get(key)!r}, "
                              f"the config has {have!r}")
    loaded = load_backbone(str(folder / checkpoint.BACKBONE_PREFIX), cfg.model.name,
                           embedding_size=cfg.model.embedding_size, dropout=cfg.model.dropout,
                           bn_mom=cfg.model.bn_mom, bn_eps=cfg.model.bn_eps)
    # both nets come from get_model with the same options: their parameters line up in order
    for p, q in zip(net.collect_params().values(), loaded.collect_params().values()):
        p.set_data(q.data())
    checkpoint.load_trainer_states(folder, trainer)
    weight, momentum = checkpoint.load_centers(folder, pfc.class_start, pfc.num_local, cfg.model.embedding_size)
    pfc.set_rows(pfc.class_start, weight, momentum)
    step = int(state["step"])
    pfc.set_step(step)
    if state.get("world_size") != dist.size():
        log.info("elastic resume: checkpoint saved on %s rank(s), continuing on %d", state.get("world_size"),
                 dist.size())
    log.info("resumed from %s at step %d", folder, step)
    return step
