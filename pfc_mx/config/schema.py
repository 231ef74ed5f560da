"""The configuration's sections and keys with their defaults: one frozen dataclass per section.

The comments give units and meanings; configs/base.yaml lists every key with its default
(docs/training.md). Ranges are checked in pfc_mx.config.rules, types when a tree is built
(pfc_mx.config.validate).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Tuple, Union

from pfc_mx.margin_rules import get_margin


# model.init, a fresh backbone's weights (pfc_mx.train.build.initializer): "xavier" (gaussian, fan out,
# magnitude 2) or "normal" (N(0, 0.1), as insightface's MXNet partial_fc train_memory.py)
MODEL_INITS = ("xavier", "normal")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "iresnet50"
    embedding_size: int = 512
    dropout: float = 0.0
    bn_mom: float = 0.9
    bn_eps: float = 2e-5
    fp16: bool = False
    init: str = "xavier"  # a fresh backbone's conv/dense weights: MODEL_INITS
    pretrained: str = ""  # fine-tune from: legacy `prefix,epoch` or our checkpoint (pfc_mx/train/pretrained.py)


@dataclass(frozen=True)
class LossConfig:
    margin: Union[str, List[float]] = "arcface"  # preset name or [m1, m2, m3]
    scale: float = 64.0
    interclass_filtering_threshold: float = 0.0

    @property
    def margins(self) -> Tuple[float, float, float]:
        """(m1, m2, m3) after resolving a preset name (pfc_mx.margin_rules.get_margin)."""
        return get_margin(self.margin)


@dataclass(frozen=True)
class PartialFCConfig:
    sample_rate: float = 1.0
    centers_on: str = "device"  # "device" or "host"
    kernels: str = "auto"       # "auto" (fused on CPU), "fused", "stock" or "original": see pfc_mx.head


@dataclass(frozen=True)
class DataConfig:
    rec: str = ""  # folder with train.rec/train.idx/property, or a .rec path
    num_classes: int = 0  # 0: read from `property` / the labels
    batch_size: int = 128  # per rank
    num_workers: int = 2
    mirror: bool = True
    color_jitter: float = 0.0
    max_corrupt_fraction: float = 0.02  # of the images a rank reads in one epoch; more stops the run
    on_wrong_size: str = "resize"  # images not 112x112x3: "resize" (counted), "skip" (counted) or "error"


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.1
    reference_batch: int = 0  # 0: use lr as given; > 0: scale lr by global_batch / reference_batch
    momentum: float = 0.9
    weight_decay: float = 5e-4
    wd_rule: str = "all"  # which parameters decay: "all", "module" or "weights" (pfc_mx.weight_decay)
    epochs: int = 20
    max_steps: int = 0  # 0: epochs × batches per epoch; > 0: stop after this many steps
    schedule: str = "poly"  # "poly" (arcface_torch) or "multistep" (original MXNet recipe)
    power: float = 2.0  # poly decay power
    warmup_epochs: float = 0.0
    milestones: List[float] = field(default_factory=list)  # epochs, for multistep
    gamma: float = 0.1  # multistep factor
    grad_clip: float = 0.0  # global L2 norm clip of backbone gradients; 0 disables
    skip_nonfinite: int = 0  # steps with a non-finite loss or gradient skipped (on every rank) before stopping


@dataclass(frozen=True)
class EvalConfig:
    targets: List[str] = field(default_factory=lambda: ["lfw", "cfp_fp", "agedb_30"])
    every: int = 2000  # steps; 0: only at the end
    batch_size: int = 64
    flip: bool = True


@dataclass(frozen=True)
class OutputConfig:
    dir: str = "work_dirs/run"
    checkpoint_every: int = 2000  # steps
    keep: int = 3  # newest complete checkpoints kept
    resume: str = "auto"  # "auto", "none", or a checkpoint directory
    allow_changes: bool = False  # resume even when the config changes the run (data, model, loss, schedule)
    log_every: int = 50  # steps
    tensorboard: bool = True


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    partial_fc: PartialFCConfig = field(default_factory=PartialFCConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    seed: int = 0

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Short hash of the resolved config (recorded in checkpoints)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
