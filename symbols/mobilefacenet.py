"""MobileFaceNet as trained by insightface's arcface_torch recipes ("mbf": blocks (1, 4, 6, 2), scale 2).

Input (B, 3, 112, 112) raw RGB → (x − 127.5) · 0.0078125 →
conv_1 3×3/2 (64·s) → conv_2_dw 3×3, 64 groups (a residual stack when blocks[0] > 1) →
dconv_23 /2 → res_3 × blocks[1] → dconv_34 /2 (128·s) → res_4 × blocks[2] → dconv_45 /2 → res_5 × blocks[3]
→ conv_6sep 1×1 (512) → conv_6dw7_7 7×7 depthwise (GDC) → pre_fc1 (FC to D, no bias) → fc1 (BN) → (B, D).

A depthwise unit ("DResidual") is conv_sep 1×1 (to its group width) → conv_dw k×k depthwise
(stride) → conv_proj 1×1 (linear, no activation), with an identity shortcut inside res_* stacks.
Every conv is followed by BatchNorm and, except for linear ones, PReLU. Layer names follow
insightface's MXNet fmobilefacenet (`conv_1_conv2d_weight`, `res_3_block0_conv_dw_batchnorm_gamma`).
As in arcface_torch, with fp16 only the stages up to res_5 run in float16; conv_6sep onwards is float32.
`insightface_mxnet=True` is insightface's own MXNet fmobilefacenet (registry name
`mobilefacenet_mxnet`), which legacy "y1" checkpoints load into exactly (symbols/legacy.py).
"""
from __future__ import annotations

from typing import Sequence

from mxnet.gluon import HybridBlock, nn

from symbols.common import MXNET_DEFAULT_EPS, Backbone, EmbeddingHead, batch_norm
from symbols.prelu import PReLU

# MXNet 1.9.1 (oneDNN) caches its BatchNorm primitives by shape and eps, not by layout, and runs
# a 2-D (B, C) input as (B, C, 1, 1): after a BatchNorm on a conv's (B, C, 1, 1) output (oneDNN's
# blocked layout), a BatchNorm on any 2-D (B, C) input with the same eps reuses that primitive and
# the process dies (SIGSEGV in MKLDNNBatchNormForwardImpl) -- in MobileFaceNet, the GDC conv's
# BatchNorm then fc1 (D = 512), or any later model's fc1 in the same process. So no BatchNorm of
# ours sees either: the GDC output is put in the plain layout first (GDC_FLATTEN), and fc1 runs
# on (B, D, 1, 1) (NamedBatchNorm's flat_input). tests/test_onednn_crash.py has the reproduction.
GDC_FLATTEN = True


def conv_block(prefix: str, in_channels: int, channels: int, kernel: int, stride: int, groups: int,
               bn_mom: float, bn_eps: float, act: bool = True, pad: int = -1,
               flatten: bool = False) -> nn.HybridSequential:
    """conv (no bias) → [Flatten] → BatchNorm → PReLU (if act); pad −1 keeps the size at stride 1.

    flatten: for a conv whose output is (B, C, 1, 1), flatten it and reshape it back to (B, C, 1, 1)
    before the BatchNorm (the same arithmetic, in MXNet's plain layout instead of oneDNN's blocked
    one). See GDC_FLATTEN.
    """
    block = nn.HybridSequential(prefix=prefix)
    with block.name_scope():
        block.add(nn.Conv2D(channels, kernel, strides=stride, padding=(kernel - 1) // 2 if pad < 0 else pad,
                            groups=groups, use_bias=False, in_channels=in_channels, prefix="conv2d_"))
        if flatten:
            block.add(nn.HybridLambda(lambda F, x: F.reshape(F.flatten(x), (0, 0, 1, 1)), prefix="plain_"))
        block.add(batch_norm("batchnorm_", channels, bn_mom, bn_eps, before_prelu=act))
        if act:
            block.add(PReLU(in_channels=channels, prefix="relu_"))
    return block


class DepthWise(HybridBlock):
    """conv_sep 1×1 → conv_dw 3×3 depthwise (stride) → conv_proj 1×1 linear; + x if residual."""

    def __init__(self, prefix: str, in_channels: int, channels: int, groups: int, stride: int, residual: bool,
                 bn_mom: float, bn_eps: float):
        super().__init__(prefix=prefix)
        self._residual = residual
        with self.name_scope():
            self.conv_sep = conv_block("conv_sep_", in_channels, groups, 1, 1, 1, bn_mom, bn_eps)
            self.conv_dw = conv_block("conv_dw_", groups, groups, 3, stride, groups, bn_mom, bn_eps)
            self.conv_proj = conv_block("conv_proj_", groups, channels, 1, 1, 1, bn_mom, bn_eps, act=False)

    def hybrid_forward(self, F, x):
        y = self.conv_proj(self.conv_dw(self.conv_sep(x)))
        return x + y if self._residual else y


def residual_stack(prefix: str, channels: int, num_block: int, groups: int, bn_mom: float,
                   bn_eps: float) -> nn.HybridSequential:
    stack = nn.HybridSequential(prefix=prefix)
    with stack.name_scope():
        for i in range(num_block):
            stack.add(DepthWise(f"block{i}_", channels, channels, groups, 1, True, bn_mom, bn_eps))
    return stack


class MobileFaceNet(Backbone):
    """MobileFaceNet (see the module docstring); input 112×112, output (B, embedding_size).

    insightface_mxnet=True builds insightface's MXNet fmobilefacenet instead (its "y1" models:
    blocks (1, 4, 6, 2), scale 1, 128-d): res_2 units 64 wide, every conv BatchNorm at MXNet's
    default eps 1e-3 (its symbols pass none), and the "GDC" output pre_fc1 with a bias and fc1
    with a fixed gamma (eps bn_eps). Parameter names are the same in both.
    """

    def __init__(self, blocks: Sequence[int] = (1, 4, 6, 2), scale: int = 2, embedding_size: int = 512,
                 dropout: float = 0.0, bn_mom: float = 0.9, bn_eps: float = 2e-5, fp16: bool = False,
                 insightface_mxnet: bool = False):
        blocks = tuple(int(b) for b in blocks)
        if len(blocks) != 4 or min(blocks) < 1 or scale < 1:
            raise ValueError(f"mobilefacenet needs 4 block counts >= 1 and scale >= 1, got {blocks}, {scale}")
        super().__init__(dict(blocks=blocks, scale=scale, embedding_size=embedding_size, dropout=dropout,
                              bn_mom=bn_mom, bn_eps=bn_eps, fp16=fp16, insightface_mxnet=insightface_mxnet))
        c1, c2 = 64 * scale, 128 * scale
        k = dict(bn_mom=bn_mom, bn_eps=MXNET_DEFAULT_EPS if insightface_mxnet else bn_eps)
        body = nn.HybridSequential(prefix="")
        body.add(conv_block("conv_1_", 3, c1, 3, 2, 1, **k))
        if blocks[0] == 1:
            body.add(conv_block("conv_2_dw_", c1, c1, 3, 1, 64, **k))
        else:
            body.add(residual_stack("res_2_", c1, blocks[0], 64 if insightface_mxnet else 128, **k))
        body.add(DepthWise("dconv_23_", c1, c1, 128, 2, False, **k),
                 residual_stack("res_3_", c1, blocks[1], 128, **k),
                 DepthWise("dconv_34_", c1, c2, 256, 2, False, **k),
                 residual_stack("res_4_", c2, blocks[2], 256, **k),
                 DepthWise("dconv_45_", c2, c2, 512, 2, False, **k),
                 residual_stack("res_5_", c2, blocks[3], 256, **k))
        head = nn.HybridSequential(prefix="")
        head.add(conv_block("conv_6sep_", c2, 512, 1, 1, 1, **k),
                 conv_block("conv_6dw7_7_", 512, 512, 7, 1, 512, act=False, pad=0, flatten=GDC_FLATTEN, **k),
                 EmbeddingHead(embedding_size, in_units=512, dropout=dropout, pre_bn=False,
                               fc_bias=insightface_mxnet, fix_gamma=insightface_mxnet, bn_mom=bn_mom, bn_eps=bn_eps))
        self.body, self.head = body, head
        self._finish()
