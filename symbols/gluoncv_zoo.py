"""Backbones from GluonCV's model zoo, by name: `symbols.get_model("gluoncv:mobilenetv2_1.0")`.

The classifier's feature extractor is kept and its trailing global pooling (and whatever
follows it) removed, so at 112×112 the head sees the last spatial map (4×4 for the usual
stride-32 networks), like insightface's "E" output; then our embedding head
BN → dropout → FC → BN (fixed gamma). Weights start random: pretrained=False always,
nothing is downloaded. Supported: zoo models with a `features` block (mobilenet*,
resnet*_v1/_v2, vgg*, densenet*, ...) and the ResNetV1b family (resnet*_v1b/c/d/s).
GluonCV is imported on first use only.
"""
from __future__ import annotations

from typing import List

import mxnet as mx
from mxnet.gluon import HybridBlock, nn

from pfc_mx.errors import ModelError
from symbols.common import Backbone, EmbeddingHead

PREFIX = "gluoncv:"
_RESNET_V1B_PARTS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def _feature_layers(zoo_name: str, model: HybridBlock) -> List[HybridBlock]:
    """The feature extractor of a zoo classifier, up to (excluding) its last global pooling."""
    features = getattr(model, "features", None)
    if isinstance(features, nn.HybridSequential):
        layers = list(features._children.values())
        pools = [i for i, b in enumerate(layers) if isinstance(b, nn.GlobalAvgPool2D)]
        return layers[:pools[-1]] if pools else layers
    if isinstance(features, HybridBlock):
        return [features]
    if all(isinstance(getattr(model, a, None), HybridBlock) for a in _RESNET_V1B_PARTS):
        return [getattr(model, a) for a in _RESNET_V1B_PARTS]
    raise ModelError(f"gluoncv model '{zoo_name}' has no feature extractor to adapt "
                     f"(supported: classifiers with a `features` block, and resnet*_v1b/c/d/s)")


class GluonCVBackbone(Backbone):
    """GluonCV classifier features + our embedding head; input 112×112 raw RGB, output (B, D)."""

    def __init__(self, zoo_name: str, embedding_size: int = 512, dropout: float = 0.0, bn_mom: float = 0.9,
                 bn_eps: float = 2e-5, fp16: bool = False):
        super().__init__(dict(zoo_name=zoo_name, embedding_size=embedding_size, dropout=dropout,
                              bn_mom=bn_mom, bn_eps=bn_eps, fp16=fp16))
        from gluoncv import model_zoo
        if zoo_name.lower() not in model_zoo.get_model_list():
            raise ModelError(f"unknown gluoncv model '{zoo_name}' (see gluoncv.model_zoo.get_model_list())")
        with mx.name.NameManager():      # a fresh counter: the same parameter names in every instance
            model = model_zoo.get_model(zoo_name, pretrained=False)
        body = nn.HybridSequential(prefix="")
        body.add(*_feature_layers(zoo_name, model))
        self.body = body
        self.head = EmbeddingHead(embedding_size, dropout=dropout, bn_mom=bn_mom, bn_eps=bn_eps)
        self._finish()
