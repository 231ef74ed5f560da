"""Memory per GPU and bytes communicated per step of a Partial FC run: pure arithmetic, no MXNet.

Usage::

    p = make_plan(RunSpec(num_classes=29_000_000, world=8, batch=128, sample_rate=0.1,
                          fp16=True, backbone="iresnet50"))
    p.total_bytes, p.memory      # per GPU; items (name, bytes, formula)
    p.comm                       # per GPU per step; items (name, bytes, formula)
    fits(p.total_bytes, 32 * GiB)  # leaves DEFAULT_HEADROOM free?

Everything is derived from the shapes of shared/DESIGN.md §3 (W ranks, local batch
B, N = W·B, embedding D, C classes) and the backbone tables below, except two
calibrated constants per framework (CALIBRATIONS): activation bytes per image
and a framework overhead. "arcface_torch" (the default) was fitted to its
published PyTorch row at 125,000 classes, where the FC layer is 2% of the total,
and checked against its rows at 1.4M-29M classes, which the FC layer dominates
(tests/test_plan.py); "mxnet" was fitted to the original MXNet partial_fc release.
The largest shard (rank 0: num_local = C // W, + 1 when C % W ≠ 0) sets the
memory of a run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from pfc_mx.errors import ConfigError
from pfc_mx.shard import MAX_ARRAY_ELEMENTS, min_world, num_sample, shard_range

MiB = 1 << 20
GiB = 1 << 30
FP32, FP16, INT64 = 4, 2, 8

# ---- calibrated: the only numbers not derived from shapes -------------------------------------
@dataclass(frozen=True)
class Calibration:
    """The two fitted constants and the measurement they were fitted to.

    activation_bytes_per_element: bytes held for backward per forward-graph element of one
        image (every conv / BN / PReLU / add output, BackboneSpec.feature_elements) in
        float32; float16 halves it. Below 4: frameworks keep op inputs, not every output.
    overhead_bytes: per GPU: CUDA context, cuDNN/cuBLAS handles and workspaces, NCCL and
        Horovod fusion buffers, allocator pool slack.
    """

    activation_bytes_per_element: float
    overhead_bytes: int
    source: str   # the measurement fitted
    check: str    # how the other published rows compare


CALIBRATIONS: Dict[str, Calibration] = {
    # Overhead: a round 1 GiB; activations then fitted to the 125k-class row, where the FC
    # layer is 2% of the total. The 1.4M-29M rows are the check (tests/test_plan.py).
    "arcface_torch": Calibration(
        2.7, 1024 * MiB,
        "arcface_torch README (PyTorch): r50, fp16, 8×V100 32GB, 128/GPU, PFC 0.1, 125k classes: 4,868 MB",
        "its PFC 0.1 rows at 1.4M-29M classes come out 4-21% below the published numbers "
        "(PyTorch keeps more (N, S) temporaries than counted here): keep headroom"),
    # Both constants solved from the two Partial FC rows; the two model-parallel rows
    # (other batch sizes, sample rate 1) are the check.
    "mxnet": Calibration(
        3.35, 2816 * MiB,
        "original MXNet partial_fc README: r50, fp16, RTX 2080Ti, PFC (rate 0.1 assumed): "
        "1M classes on 8 GPUs × 128: 8,100 MB; 10M on 64 GPUs × 64: 6,722 MB",
        "its model-parallel rows (1M classes, 8 × 128; 10M, 64 × 32) come out 2-3% below the published numbers"),
}
DEFAULT_CALIBRATION = "arcface_torch"

# ---- counted buffers of the head (shared/DESIGN.md §3 steps 3-11) ------------------------------
SAMPLED_CENTER_COPIES = 4    # (S, D) fp32: gathered W[idx], normalised, gradient, momentum rows
LOGIT_BUFFERS = 2            # (N, S) fp32: logits, probabilities turned into their gradient
EMBEDDING_COPIES = 3         # (N, D) fp32: gathered X, normalised X, gradient dX
BACKBONE_STATE_BYTES = 12    # per parameter: fp32 weight + grad + momentum, or with fp16
                             # fp16 weight + fp16 grad + fp32 master weight + fp32 momentum
DEFAULT_HEADROOM = 0.10      # fraction of GPU memory a "fits" verdict leaves free


@dataclass(frozen=True)
class BackboneSpec:
    """Sizes of a backbone at 112×112, from insightface arcface_torch's definitions.

    params: learnable parameters with a 512-d embedding (BN gamma/beta, PReLU, the frozen
        gamma of the last BN included; BN running statistics not);
    params_per_dim: parameters per embedding dimension (last linear layer + its BN);
    feature_elements: per-image elements output by every conv, BN, PReLU and residual add
        of the forward graph, plus the input image.
    """

    params: int
    params_per_dim: int
    feature_elements: int

    def num_params(self, embedding_size: int) -> int:
        return self.params + self.params_per_dim * (embedding_size - 512)


_IRESNET_FC = 512 * 7 * 7 + 1 + 2   # fc weight row, bias, BatchNorm1d gamma/beta
BACKBONES: Dict[str, BackboneSpec] = {
    "iresnet18": BackboneSpec(24_025_600, _IRESNET_FC, 12_657_920),
    "iresnet34": BackboneSpec(34_139_328, _IRESNET_FC, 17_048_320),
    "iresnet50": BackboneSpec(43_590_848, _IRESNET_FC, 19_858_176),
    "iresnet100": BackboneSpec(65_156_160, _IRESNET_FC, 31_800_064),
    "iresnet200": BackboneSpec(118_833_920, _IRESNET_FC, 56_210_688),
    "mobilefacenet": BackboneSpec(2_059_520, 512 + 2, 12_031_744),
}


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


@dataclass(frozen=True)
class Item:
    name: str
    bytes: float
    formula: str


@dataclass(frozen=True)
class Plan:
    spec: RunSpec
    num_local: int          # classes on the largest shard (rank 0)
    num_sample: int         # S: centers used per step on that shard, worst case
    memory: List[Item]
    comm: List[Item]
    assumptions: List[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> float:
        return sum(i.bytes for i in self.memory)

    @property
    def comm_bytes(self) -> float:
        return sum(i.bytes for i in self.comm)


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
    if spec.centers_on not in ("device", "host"):
        raise ConfigError(f"--centers-on must be device or host, got {spec.centers_on!r}")
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


def memory_items(spec: RunSpec, num_local: int, s: int) -> List[Item]:
    """Per-GPU memory of the largest shard, one Item per component (bytes)."""
    d, n, b = spec.embedding_size, spec.world * spec.batch, spec.batch
    half = FP16 if spec.fp16 else 0
    params = BACKBONES[spec.backbone].num_params(d)
    act_image = activation_bytes_per_image(spec) / (2 if spec.fp16 else 1)
    centers = 2 * num_local * d * FP32 if spec.centers_on == "device" else 0
    sampled_bytes = SAMPLED_CENTER_COPIES * FP32 + half
    logit_bytes = LOGIT_BUFFERS * FP32 + half
    fp16_note = " + fp16 copy" if spec.fp16 else ""
    return [
        Item("class centers + momentum", centers,
             f"2 × {num_local:,} × {d} × 4 B" + ("" if centers else " (kept on the host)")),
        Item("sampled centers (S×D)", s * d * sampled_bytes,
             f"{s:,} × {d} × ({SAMPLED_CENTER_COPIES} × 4 B{fp16_note})"),
        Item("logits + gradient (N×S)", n * s * logit_bytes,
             f"{n:,} × {s:,} × ({LOGIT_BUFFERS} × 4 B{fp16_note})"),
        Item("gathered embeddings (N×D) + labels", n * d * EMBEDDING_COPIES * FP32 + 2 * n * INT64,
             f"{n:,} × {d} × {EMBEDDING_COPIES} × 4 B + 2 × {n:,} × 8 B"),
        Item("backbone weights + grads + momentum", params * BACKBONE_STATE_BYTES,
             f"{params:,} params × {BACKBONE_STATE_BYTES} B"),
        Item("backbone activations", b * act_image,
             f"{b} images × {act_image / MiB:.1f} MiB" + (" (fp16)" if spec.fp16 else "")),
        Item("framework overhead", overhead_bytes(spec), "constant"),
    ]


def ring_allgather_bytes(world: int, total_bytes: float) -> float:
    """Bytes each rank sends in a ring allgather of total_bytes (all ranks' parts together)."""
    return (world - 1) / world * total_bytes


def ring_allreduce_bytes(world: int, total_bytes: float) -> float:
    """Bytes each rank sends in a ring allreduce (reduce-scatter + allgather) of total_bytes."""
    return 2 * (world - 1) / world * total_bytes


def comm_items(spec: RunSpec) -> List[Item]:
    """Bytes each GPU sends per step, ring algorithms, one Item per collective."""
    w, d, n = spec.world, spec.embedding_size, spec.world * spec.batch
    params = BACKBONES[spec.backbone].num_params(d)
    grad_bytes = FP16 if spec.fp16 else FP32
    ring = f"{w - 1}/{w}"
    return [
        Item("allgather embeddings", ring_allgather_bytes(w, n * d * FP32), f"{ring} × {n:,} × {d} × 4 B"),
        Item("allgather labels", ring_allgather_bytes(w, n * INT64), f"{ring} × {n:,} × 8 B"),
        Item("allreduce softmax max, sum, target", ring_allreduce_bytes(w, 3 * n * FP32),
             f"2 × {ring} × 3 × {n:,} × 4 B"),
        Item("allreduce embedding gradients", ring_allreduce_bytes(w, n * d * FP32),
             f"2 × {ring} × {n:,} × {d} × 4 B"),
        Item("allreduce backbone gradients", ring_allreduce_bytes(w, params * grad_bytes),
             f"2 × {ring} × {params:,} × {grad_bytes} B"),
    ]


def assumptions(spec: RunSpec, num_local: int, s: int) -> List[str]:
    """The modelling choices behind the numbers, as sentences for the tool's output."""
    cal = CALIBRATIONS[spec.calibration]
    elements = BACKBONES[spec.backbone].feature_elements
    act = activation_bytes_per_image(spec) / MiB
    lines = [
        f"rank 0 holds the largest shard: num_local = C // W (+1 when C % W > 0) = {num_local:,}; "
        f"S = max(int(rate × num_local), positives) = {s:,}, every sample a distinct positive",
        "centers, momentum, logits and their gradients are float32"
        + ("; fp16 adds a float16 copy of the logits and of the normalised sampled centers" if spec.fp16 else ""),
        f"backbone state: {BACKBONE_STATE_BYTES} B per parameter (weight, gradient, momentum"
        + ("; fp16 weights and gradients with fp32 master weights)" if spec.fp16 else ")"),
    ]
    if spec.activation_bytes_per_image is None:
        lines.append(f"backbone activations ({spec.calibration} calibration): {spec.backbone} has {elements:,} "
                     f"forward-graph elements per image × {cal.activation_bytes_per_element} B = "
                     f"{act:.1f} MiB per image in fp32, halved with fp16")
    else:
        lines.append(f"backbone activations (given): {act:.1f} MiB per image in fp32, halved with fp16")
    origin = "given" if spec.overhead_bytes is not None else f"{spec.calibration} calibration"
    lines += [
        f"framework overhead ({origin}): {overhead_bytes(spec) / MiB:,.0f} MiB per GPU (CUDA context, "
        "cuDNN/cuBLAS workspaces, NCCL/Horovod buffers, allocator slack)",
        "communication: bytes each GPU sends per step with ring collectives; backbone gradients in "
        + ("float16" if spec.fp16 else "float32") + "; a reduce-scatter of the embedding gradients "
        "would halve that row",
    ]
    if spec.activation_bytes_per_image is None or spec.overhead_bytes is None:
        lines.insert(-1, f"calibrated on: {cal.source}; {cal.check}")
    if spec.hosts > 1:
        lines.append(f"{spec.hosts} hosts × {spec.world // spec.hosts} GPUs: in a flat ring each host's "
                     "network link carries the per-GPU bytes above")
    if spec.centers_on == "host":
        lines.append(f"centers on the host: {2 * num_local * spec.embedding_size * FP32 / GiB:.2f} GiB "
                     "of host memory per rank, not counted in the GPU total")
    need = min_world(spec.num_classes, spec.embedding_size)
    if spec.world < need:
        lines.append(f"**too few GPUs for pfc_mx on the released MXNet wheels**: the shard holds "
                     f"{num_local * spec.embedding_size:,} elements, one MXNet array at most {MAX_ARRAY_ELEMENTS:,} "
                     f"(builds without USE_INT64_TENSOR_SIZE); PartialFC refuses it: use at least {need} GPUs")
    n = spec.world * spec.batch
    if n * s > MAX_ARRAY_ELEMENTS:
        lines.append(f"**logits too large for pfc_mx on the released MXNet wheels**: N × S = {n * s:,} elements, "
                     f"one MXNet array at most {MAX_ARRAY_ELEMENTS:,}; PartialFC refuses the step: lower the "
                     "sample rate or the batch, or use more GPUs")
    return lines


def make_plan(spec: RunSpec) -> Plan:
    """Validate spec and compute the whole plan (largest shard)."""
    validate(spec)
    num_local = largest_shard(spec.num_classes, spec.world)
    s = sampled_centers(num_local, spec.sample_rate, spec.world * spec.batch)
    return Plan(spec, num_local, s, memory_items(spec, num_local, s), comm_items(spec),
                assumptions(spec, num_local, s))


def fits(total_bytes: float, gpu_bytes: float, headroom: float = DEFAULT_HEADROOM) -> bool:
    """True when the estimate leaves at least `headroom` (a fraction) of the GPU memory free."""
    if not 0.0 <= headroom < 1.0:
        raise ConfigError(f"--headroom must be in [0, 1), got {headroom!r}")
    return total_bytes <= (1.0 - headroom) * gpu_bytes
