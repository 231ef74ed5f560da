"""The backbone registry: a flat {name: constructor} table and `get_model(name, **kw)`.

    net = symbols.get_model("iresnet50", embedding_size=512, fp16=True)
    net.initialize(mx.init.Xavier()); net.hybridize(static_alloc=True, static_shape=True)
    emb = net(images)                 # images (B, 3, 112, 112) raw RGB -> emb (B, 512) float32

Names: see `list_models()`, plus `gluoncv:<model zoo name>` for GluonCV classifiers
adapted to 112×112 (symbols/gluoncv_zoo.py).
"""
from __future__ import annotations

import inspect
from functools import partial
from typing import Any, Callable, Dict, List

from pfc_mx.errors import ModelError
from symbols.common import Backbone
from symbols.gluoncv_zoo import PREFIX as GLUONCV_PREFIX, GluonCVBackbone
from symbols.iresnet import DEMO_SPEC, SPECS, IResNet
from symbols.mobilefacenet import MobileFaceNet

_MODELS: Dict[str, Callable[..., Backbone]] = {
    **{name: partial(IResNet, units=units, channels=channels) for name, (units, channels) in SPECS.items()},
    "iresnet_demo": partial(IResNet, **DEMO_SPEC),
    "mobilefacenet": MobileFaceNet,
    # insightface's MXNet fmobilefacenet ("y1": 128-d in its model zoo; set embedding_size)
    "mobilefacenet_mxnet": partial(MobileFaceNet, blocks=(1, 4, 6, 2), scale=1, insightface_mxnet=True),
}


def list_models() -> List[str]:
    """The registered names (GluonCV models come on top as `gluoncv:<zoo name>`)."""
    return sorted(_MODELS)


def get_model(name: str, embedding_size: int = 512, dropout: float = 0.0, bn_mom: float = 0.9,
              bn_eps: float = 2e-5, fp16: bool = False, **kwargs: Any) -> Backbone:
    """A new, uninitialised backbone: raw RGB (B, 3, 112, 112) → (B, embedding_size) float32.

    fp16=True keeps float16 weights and activations in the body (GPU only); the embedding
    head and the output stay float32. Extra kwargs go to the constructor (e.g. `units`,
    `channels` of IResNet; `blocks`, `scale` of MobileFaceNet). Raises ModelError for an
    unknown name or option.
    """
    if int(embedding_size) < 1:
        raise ModelError(f"model '{name}': embedding_size must be >= 1, got {embedding_size}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ModelError(f"model '{name}': dropout must be in [0, 1), got {dropout}")
    options = dict(embedding_size=int(embedding_size), dropout=float(dropout), bn_mom=float(bn_mom),
                   bn_eps=float(bn_eps), fp16=bool(fp16), **kwargs)
    if name.startswith(GLUONCV_PREFIX):
        constructor: Callable[..., Backbone] = partial(GluonCVBackbone, name[len(GLUONCV_PREFIX):])
    elif name in _MODELS:
        constructor = _MODELS[name]
    else:
        raise ModelError(f"unknown model '{name}'; valid names: {', '.join(list_models())}, "
                         f"or {GLUONCV_PREFIX}<gluoncv model zoo name>")
    try:
        inspect.signature(constructor).bind(**options)
    except TypeError as e:
        raise ModelError(f"model '{name}': {e}") from None
    try:
        return constructor(**options)
    except ValueError as e:
        raise ModelError(f"model '{name}': {e}") from None
