"""The numbers behind the estimates: units, the two calibrated constants, buffer counts, backbone sizes.

Everything else in pfc_mx.capacity is derived from shapes; these tables are where a new
backbone, a new framework measurement or a change in the head's buffers goes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

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

# ---- counted buffers of the head (docs/design.md, "One training step") ------------------------
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
