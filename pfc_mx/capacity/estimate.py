"""Memory per GPU and bytes sent per step, one Item per component, and the Plan that holds them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from pfc_mx.capacity.assumptions import assumptions
from pfc_mx.capacity.spec import (RunSpec, activation_bytes_per_image, largest_shard, overhead_bytes,
                                  sampled_centers, validate)
from pfc_mx.capacity.tables import (BACKBONE_STATE_BYTES, BACKBONES, DEFAULT_HEADROOM, EMBEDDING_COPIES, FP16,
                                    FP32, INT64, LOGIT_BUFFERS, SAMPLED_CENTER_COPIES, MiB)
from pfc_mx.errors import ConfigError


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
