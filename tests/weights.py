"""Test weights whose embeddings depend on the input.

Random weights with random BatchNorm statistics give a deep net whose output is dominated by
the BatchNorm shifts: every image gets nearly the same embedding (cosine 0.99999 between a
random image and a blank one), and a parity check passes whatever the graph does to the pixels.
`calibrate` sets each BatchNorm's running statistics to the batch statistics of real inputs,
so every layer sees unit-scale activations and the embedding follows the image.
"""
from __future__ import annotations

import mxnet as mx
import numpy as np
from mxnet import autograd
from mxnet.gluon import HybridBlock, nn


def _batch_norms(block: HybridBlock):
    if isinstance(block, nn.BatchNorm):
        yield block
    for child in block._children.values():
        yield from _batch_norms(child)


def randomise(net: HybridBlock, seed: int = 0) -> None:
    """Random gammas in [0.5, 1.5], betas ~ N(0, 0.1), PReLU slopes in [0, 0.5] (initialised net)."""
    rng = np.random.RandomState(seed)
    for name, p in net.collect_params().items():
        if name.endswith("gamma") and p.grad_req != "null":
            p.set_data(mx.nd.array(rng.uniform(0.5, 1.5, p.shape)))
        elif name.endswith("beta"):
            p.set_data(mx.nd.array(rng.normal(0, 0.1, p.shape)))
        elif name.endswith("alpha"):
            p.set_data(mx.nd.array(rng.uniform(0.0, 0.5, p.shape)))


def calibrate(net: HybridBlock, images: mx.nd.NDArray) -> None:
    """Set every BatchNorm's running mean/var to the statistics of `images` (B, 3, 112, 112) raw RGB."""
    norms = list(_batch_norms(net))
    saved = [bn._kwargs["momentum"] for bn in norms]
    for bn in norms:
        bn._kwargs["momentum"] = 0.0
    with autograd.record(train_mode=True):
        out = net(images)
    out.backward()              # MXNet 1.9 updates the running statistics in BatchNorm's backward
    mx.nd.waitall()
    for bn, momentum in zip(norms, saved):
        bn._kwargs["momentum"] = momentum


def input_dependent(net: HybridBlock, seed: int = 0, batch: int = 8) -> HybridBlock:
    """randomise + calibrate an initialised, not yet hybridized net on random images; returns net."""
    randomise(net, seed)
    rng = np.random.RandomState(seed + 1)
    calibrate(net, mx.nd.array(rng.randint(0, 256, (batch, 3, 112, 112)), dtype="float32"))
    return net


def cosine_between_inputs(forward, seed: int = 5) -> float:
    """The largest cosine between the embeddings of a random image, another one and a blank one."""
    rng = np.random.RandomState(seed)
    x = np.concatenate([rng.randint(0, 256, (2, 3, 112, 112)), np.full((1, 3, 112, 112), 128)]).astype(np.float32)
    e = np.asarray(forward(x), dtype=np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    c = e @ e.T
    return float(max(c[0, 1], c[0, 2], c[1, 2]))
