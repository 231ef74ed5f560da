"""The parts of a run, each built from the config: data, backbone, optimizer, head, and its course.

The course is where the run starts and how it goes on: its unit (the global batch of its first
start), the learning-rate schedule in images, and the starting Position (pfc_mx.train.progress).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Dict, Tuple

import mxnet as mx
from mxnet import gluon

import symbols
from pfc_mx.config import Config
from pfc_mx.config.schema import MODEL_INITS
from pfc_mx.data import RecordDataset, RecordLoader
from pfc_mx.data.options import IMAGE_SIZE
from pfc_mx.errors import ConfigError
from pfc_mx.head import PartialFC
from pfc_mx.weight_decay import apply_wd_rule
from pfc_mx.train.progress import Frame, Position, position_from_state
from pfc_mx.train.schedule import scaled_base_lr, schedule_by_images

log = logging.getLogger("pfc_mx.train")


def data(cfg: Config, rank: int, world: int) -> Tuple[int, RecordLoader]:
    """(number of classes, this rank's loader) for cfg.data; ConfigError when they cannot train."""
    dataset = RecordDataset(cfg.data.rec)
    num_classes = cfg.data.num_classes or dataset.num_classes
    if num_classes < dataset.num_classes:
        raise ConfigError(f"data.num_classes = {num_classes} but {cfg.data.rec} has {dataset.num_classes} classes")
    d = cfg.data
    loader = RecordLoader(dataset, d.batch_size, rank=rank, world_size=world, seed=cfg.seed,
                          num_workers=d.num_workers, mirror=d.mirror, color_jitter=d.color_jitter,
                          max_corrupt_fraction=d.max_corrupt_fraction, on_wrong_size=d.on_wrong_size)
    if loader.batches_per_epoch == 0:
        loader.close()
        raise ConfigError(f"{dataset.num_images} images are too few for {world} ranks × batch {d.batch_size}")
    return num_classes, loader


def initializer(name: str) -> mx.init.Initializer:
    """model.init for the conv and dense weights: "xavier" (gaussian, fan out, magnitude 2: std
    sqrt(2 / (out channels × kernel area))) or "normal" (N(0, 0.1), the original MXNet partial_fc's
    mx.init.Normal(0.1)). Either way biases and BatchNorm betas start at 0, gammas at 1, PReLU
    slopes at 0.25 (their own initialisers), and running statistics at 0 and 1."""
    if name == "normal":
        return mx.init.Normal(0.1)
    if name == "xavier":
        return mx.init.Xavier(rnd_type="gaussian", factor_type="out", magnitude=2)
    raise ConfigError(f"model.init {name!r}: expected one of {', '.join(MODEL_INITS)}")


def backbone(cfg: Config, ctx: mx.Context) -> gluon.HybridBlock:
    """cfg.model, initialised (model.init, seeded), hybridized and run once so its shapes exist.

    With partial_fc.kernels 'original' its PReLU and BatchNorm are MXNet's own operators, as in
    the original code; otherwise the kernels in force (symbols.prelu, symbols.batchnorm).
    """
    m = cfg.model
    fp16 = m.fp16 and ctx.device_type == "gpu"
    if m.fp16 and not fp16:
        log.warning("model.fp16 needs a GPU; training in float32 on %s", ctx)
    net = symbols.get_model(m.name, embedding_size=m.embedding_size, dropout=m.dropout,
                            bn_mom=m.bn_mom, bn_eps=m.bn_eps, fp16=fp16)
    mx.random.seed(cfg.seed)
    net.initialize(initializer(m.init), ctx=ctx)
    if cfg.partial_fc.kernels == "original":
        net.use_kernels("stock", "stock")
    net.hybridize(static_alloc=True, static_shape=True)
    net(mx.nd.zeros((cfg.data.batch_size, 3, IMAGE_SIZE, IMAGE_SIZE), ctx=ctx))
    return net


def trainer(cfg: Config, net: gluon.HybridBlock) -> gluon.Trainer:
    """SGD with momentum and weight decay (on the parameters optim.wd_rule names, pfc_mx.weight_decay)
    over the backbone; the lr is set every step, no kvstore (the ranks' gradients are summed by
    pfc_mx.train.sync)."""
    o = cfg.optim
    exempt = apply_wd_rule(net.collect_params().values(), o.wd_rule)
    log.info("weight decay %g on all trainable backbone parameters%s (optim.wd_rule %s)", o.weight_decay,
             f" but {len(exempt)}" if exempt else "", o.wd_rule)
    return gluon.Trainer(net.collect_params(), "sgd",
                         {"learning_rate": 0.0, "momentum": o.momentum, "wd": o.weight_decay,
                          "multi_precision": cfg.model.fp16, "lazy_update": False}, kvstore=None)


def head(cfg: Config, num_classes: int, ctx: mx.Context) -> PartialFC:
    """This rank's Partial FC head: its shard of the class centers and the margin softmax."""
    return PartialFC(num_classes, cfg.model.embedding_size, margin=cfg.loss.margins, scale=cfg.loss.scale,
                     sample_rate=cfg.partial_fc.sample_rate,
                     interclass_filtering_threshold=cfg.loss.interclass_filtering_threshold,
                     ctx=ctx, seed=cfg.seed, centers_on=cfg.partial_fc.centers_on, kernels=cfg.partial_fc.kernels)


@dataclass(frozen=True)
class Course:
    """frame: the run's extent in images; base_lr; schedule: lr of a step that starts after n images;
    saved: the position of the checkpoint resumed from (Position() on a fresh start); start: where
    training starts with the current global batch."""

    frame: Frame
    base_lr: float
    schedule: Callable[[int], float]
    saved: Position
    start: Position


def course(cfg: Config, state: Dict[str, Any], num_images: int, global_batch: int, world: int) -> Course:
    """The course of a run resumed from `state` (a checkpoint's state.json; {} on a fresh start)."""
    # the run's unit: the global batch of its first start
    base_batch = int(state.get("base_batch") or int(state.get("world_size", world)) * cfg.data.batch_size)
    base_lr = scaled_base_lr(cfg.optim, base_batch)
    frame = Frame(num_images, cfg.optim.epochs, base_batch, cfg.optim.max_steps * base_batch)
    saved = position_from_state(state, cfg.data.batch_size, num_images)
    return Course(frame, base_lr, schedule_by_images(cfg.optim, base_lr, frame), saved,
                  frame.start(saved, global_batch))
