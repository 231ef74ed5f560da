"""IResNet ("IR" ResNet of insightface / ArcFace), as a spec table and one builder.

    net = IResNet(units=UNITS[50], channels=CHANNELS)       # = symbols.get_model("iresnet50")

Input (B, 3, 112, 112) raw RGB → (x − 127.5) · 0.0078125 → conv0 3×3 stride 1 (2 in
iresnet_demo, DEMO_SPEC) + bn0 + relu0
(PReLU) → four stages of IR units, the first unit of each at stride 2 → bn1 → dropout →
pre_fc1 (FC to D) → fc1 (BN, fixed gamma) → (B, D) float32.

IR unit: bn1 → conv1 3×3 → bn2 → relu1 (PReLU) → conv2 3×3 (stride) → bn3, plus the
shortcut: identity, or conv1sc 1×1 (stride) + sc (BN) where the shape changes.
Parameter names follow insightface's legacy MXNet models (`conv0_weight`,
`stage1_unit1_conv1sc_weight`, `pre_fc1_weight`, ...) up to Gluon's suffixes;
symbols/legacy.py maps the suffixes.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

from mxnet.gluon import HybridBlock, nn

from symbols.common import Backbone, EmbeddingHead, batch_norm
from symbols.prelu import PReLU

UNITS: Dict[int, Tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    200: (6, 26, 60, 6),
}
CHANNELS = (64, 128, 256, 512)

# registry name -> (units per stage, channels per stage)
SPECS: Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...]]] = {f"iresnet{d}": (u, CHANNELS) for d, u in UNITS.items()}
# tests: PReLU's backward at 112×112 dominates a CPU step, hence few channels
SPECS["iresnet_tiny"] = ((1, 1, 1, 1), (8, 16, 32, 64))
# the CPU demo (not a legacy shape): a stride-2 stem, so every layer runs at 56×56 or less
DEMO_SPEC = dict(units=(1, 1, 1, 1), channels=(16, 32, 64, 128), stem_stride=2)


def _conv(prefix: str, in_channels: int, channels: int, kernel: int, stride: int) -> nn.Conv2D:
    return nn.Conv2D(channels, kernel, strides=stride, padding=kernel // 2, use_bias=False,
                     in_channels=in_channels, prefix=prefix)


class IRUnit(HybridBlock):
    """One IR unit (see the module docstring); (B, C_in, H, W) → (B, C, ⌈H/stride⌉, ⌈W/stride⌉)."""

    def __init__(self, prefix: str, in_channels: int, channels: int, stride: int, bn_mom: float, bn_eps: float):
        super().__init__(prefix=prefix)
        with self.name_scope():
            self.bn1 = batch_norm("bn1_", in_channels, bn_mom, bn_eps)
            self.conv1 = _conv("conv1_", in_channels, channels, 3, 1)
            self.bn2 = batch_norm("bn2_", channels, bn_mom, bn_eps, before_prelu=True)
            self.relu1 = PReLU(in_channels=channels, prefix="relu1_")
            self.conv2 = _conv("conv2_", channels, channels, 3, stride)
            self.bn3 = batch_norm("bn3_", channels, bn_mom, bn_eps)
            if stride != 1 or in_channels != channels:
                self.conv1sc = _conv("conv1sc_", in_channels, channels, 1, stride)
                self.sc = batch_norm("sc_", channels, bn_mom, bn_eps)
            else:
                self.conv1sc = self.sc = None

    def hybrid_forward(self, F, x):
        y = self.bn3(self.conv2(self.relu1(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.conv1sc is None else self.sc(self.conv1sc(x))
        return y + shortcut


class IResNet(Backbone):
    """IResNet with `units[i]` IR units of `channels[i]` channels in stage i+1 (input 112×112)."""

    def __init__(self, units: Sequence[int], channels: Sequence[int] = CHANNELS, embedding_size: int = 512,
                 dropout: float = 0.0, bn_mom: float = 0.9, bn_eps: float = 2e-5, fp16: bool = False,
                 input_size: int = 112, stem_stride: int = 1):
        units, channels = tuple(int(u) for u in units), tuple(int(c) for c in channels)
        if len(units) != len(channels) or min(units) < 1:
            raise ValueError(f"iresnet needs one unit count >= 1 per stage, got units {units}, channels {channels}")
        super().__init__(dict(units=units, channels=channels, embedding_size=embedding_size, dropout=dropout,
                              bn_mom=bn_mom, bn_eps=bn_eps, fp16=fp16, input_size=input_size,
                              stem_stride=stem_stride))
        body = nn.HybridSequential(prefix="")
        body.add(_conv("conv0_", 3, channels[0], 3, stem_stride),
                 batch_norm("bn0_", channels[0], bn_mom, bn_eps, before_prelu=True),
                 PReLU(in_channels=channels[0], prefix="relu0_"))
        in_channels, size = channels[0], (input_size - 1) // stem_stride + 1
        for i, (n, c) in enumerate(zip(units, channels), start=1):
            for j in range(1, n + 1):
                stride = 2 if j == 1 else 1
                body.add(IRUnit(f"stage{i}_unit{j}_", in_channels, c, stride, bn_mom, bn_eps))
                in_channels = c
            size = (size - 1) // 2 + 1
        self.body = body
        self.head = EmbeddingHead(embedding_size, in_channels=in_channels, in_units=in_channels * size * size,
                                  dropout=dropout, bn_mom=bn_mom, bn_eps=bn_eps)
        self._finish()

