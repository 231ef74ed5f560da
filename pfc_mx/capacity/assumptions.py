"""The modelling choices behind a plan's numbers, written as sentences for the tool's output."""
from __future__ import annotations

from typing import List

from pfc_mx.capacity.spec import RunSpec, activation_bytes_per_image, overhead_bytes
from pfc_mx.capacity.tables import BACKBONE_STATE_BYTES, BACKBONES, CALIBRATIONS, FP32, GiB, MiB
from pfc_mx.shard import MAX_ARRAY_ELEMENTS, min_world


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
