"""What a run looks like (RunSpec), its checks, and the per-run quantities the estimates share."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from pfc_mx.capacity.tables import BACKBONES, CALIBRATIONS, DEFAULT_CALIBRATION
from pfc_mx.errors import ConfigError
from pfc_mx.head.options import CENTERS_ON
from pfc_mx.shard import num_sample, shard_range


@dataclass(frozen=True)
class RunSpec:
    """What a run looks like: classes, world = hosts × GPUs per host, batch per GPU, ..."""

    num_classes: int
    world: int
    batch: int
    embedding_size: int = 512
    sample_rate: float = 1.0
    fp16: bool = False
    backbone: str = "iresnet50"
    hosts: int = 1
    centers_on: str = "device"                          # "device" or "host"
    calibration: str = DEFAULT_CALIBRATION              # a key of CALIBRATIONS
    activation_bytes_per_image: Optional[float] = None  # fp32; None: from the calibration
    overhead_bytes: Optional[int] = None                # None: from the calibration


def validate(spec: RunSpec) -> None:
    """Raise ConfigError (one line naming the option) for impossible inputs."""
    for name, value in (("classes", spec.num_classes), ("gpus", spec.world), ("batch", spec.batch),
                        ("embedding-size", spec.embedding_size), ("hosts", spec.hosts)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"--{name} must be a positive integer, got {value!r}")
    if spec.world % spec.hosts:
        raise ConfigError(f"--gpus {spec.world} is not a multiple of {spec.hosts} hosts")
    if not 0.0 < spec.sample_rate <= 1.0:
        raise ConfigError(f"--sample-rate must be in (0, 1], got {spec.sample_rate!r}")
    if spec.backbone not in BACKBONES:
        raise ConfigError(f"unknown backbone '{spec.backbone}'; valid: {', '.join(BACKBONES)}")
    if spec.calibration not in CALIBRATIONS:
        raise ConfigError(f"unknown calibration '{spec.calibration}'; valid: {', '.join(CALIBRATIONS)}")
    if spec.centers_on not in CENTERS_ON:
        raise ConfigError(f"--centers-on must be {' or '.join(CENTERS_ON)}, got {spec.centers_on!r}")
    for name, value in (("activation-per-image", spec.activation_bytes_per_image),
                        ("overhead", spec.overhead_bytes)):
        if value is not None and value < 0:
            raise ConfigError(f"--{name} must be >= 0, got {value!r}")


def largest_shard(num_classes: int, world: int) -> int:
    """Classes on rank 0, the largest shard: C // W, plus one when C % W ≠ 0."""
    return shard_range(num_classes, world, 0)[1]


def sampled_centers(num_local: int, sample_rate: float, global_batch: int) -> int:
    """S on a shard of num_local classes, worst case: every sample of the batch a distinct positive."""
    return num_sample(sample_rate, num_local, min(global_batch, num_local))


def activation_bytes_per_image(spec: RunSpec) -> float:
    """Activation bytes of one 112×112 image in float32 (given, or feature elements × calibration)."""
    if spec.activation_bytes_per_image is not None:
        return float(spec.activation_bytes_per_image)
    return BACKBONES[spec.backbone].feature_elements * CALIBRATIONS[spec.calibration].activation_bytes_per_element


def overhead_bytes(spec: RunSpec) -> int:
    """Framework overhead per GPU (given, or from the calibration)."""
    if spec.overhead_bytes is not None:
        return int(spec.overhead_bytes)
    return CALIBRATIONS[spec.calibration].overhead_bytes
