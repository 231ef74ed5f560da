"""Checkpoints made from the insightface symbol fixtures in tests/data/legacy (see make_fixtures.py).

The JSON files are copied as they are; the weights are random with the shapes the symbol infers
(seeded), then every BatchNorm's moving statistics are set to the batch statistics of random
images by MXNet itself (the symbol run in training mode with momentum 0 and no dropout), so that
the embeddings depend on the input. Nothing here uses our import code.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict, Tuple

import mxnet as mx
import numpy as np
from mxnet import autograd

DATA = Path(__file__).resolve().parent / "data" / "legacy"


def random_params(sym: mx.sym.Symbol, seed: int) -> Tuple[Dict[str, mx.nd.NDArray], Dict[str, mx.nd.NDArray]]:
    """Random arg and aux params for sym at (1, 3, 112, 112): He-scaled weights, gammas in [0.5, 1.5],
    betas ~ N(0, 0.1), PReLU slopes in [0, 0.5], unit moving statistics."""
    rng = np.random.RandomState(seed)
    arg_shapes, _, aux_shapes = sym.infer_shape(data=(1, 3, 112, 112))
    args = {}
    for name, shape in zip(sym.list_arguments(), arg_shapes):
        if name == "data":
            continue
        if name.endswith("relu_gamma") or "_relu" in name:
            value = rng.uniform(0.0, 0.5, shape)
        elif name.endswith("_gamma"):
            value = rng.uniform(0.5, 1.5, shape)
        elif len(shape) > 1:
            value = rng.normal(0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
        else:
            value = rng.normal(0, 0.1, shape)
        args[name] = mx.nd.array(value)
    auxs = {name: mx.nd.zeros(shape) if name.endswith("mean") else mx.nd.ones(shape)
            for name, shape in zip(sym.list_auxiliary_states(), aux_shapes)}
    return args, auxs


def calibrate(json_text: str, args, auxs, seed: int, batch: int = 8) -> None:
    """Set auxs (moving mean/var) in place to the batch statistics of random images, computed by
    MXNet on the symbol with every BatchNorm momentum 0 and every Dropout off."""
    graph = json.loads(json_text)
    for node in graph["nodes"]:
        attrs = node.get("attrs", node.get("attr", {}))
        if node["op"] == "BatchNorm":
            attrs["momentum"] = "0"
        elif node["op"] == "Dropout":
            attrs["p"] = "0"
        if attrs:
            node["attrs"] = attrs
            node.pop("attr", None)
    sym = mx.sym.load_json(json.dumps(graph))
    net = mx.gluon.SymbolBlock(sym, mx.sym.var("data"))
    net.collect_params().load_dict({**args, **auxs}, ctx=mx.cpu(), ignore_extra=True)
    x = mx.nd.array(np.random.RandomState(seed + 1).randint(0, 256, (batch, 3, 112, 112)), dtype="float32")
    with autograd.record(train_mode=True):
        out = net(x)
    out.backward()                       # MXNet 1.9 updates moving statistics in BatchNorm's backward
    params = net.collect_params()
    for name in auxs:
        auxs[name] = params[name].data().copy()


def make_checkpoint(folder: Path, name: str, seed: int = 0, epoch: int = 0) -> str:
    """folder/<name>-symbol.json (the fixture, unchanged) + <name>-%04d.params; returns the prefix."""
    folder.mkdir(parents=True, exist_ok=True)
    prefix = str(folder / name)
    shutil.copy(DATA / f"{name}-symbol.json", f"{prefix}-symbol.json")
    text = (DATA / f"{name}-symbol.json").read_text()
    sym = mx.sym.load_json(text)
    args, auxs = random_params(sym, seed)
    calibrate(text, args, auxs, seed)
    arrays = {f"arg:{k}": v for k, v in args.items()}
    arrays.update({f"aux:{k}": v for k, v in auxs.items()})
    mx.nd.save(f"{prefix}-{epoch:04d}.params", arrays)
    return prefix


def module_forward(prefix: str, epoch: int, x: np.ndarray) -> np.ndarray:
    """The reference: mx.model.load_checkpoint + mx.mod.Module on the files, output fc1_output."""
    sym, args, auxs = mx.model.load_checkpoint(prefix, epoch)
    sym = sym.get_internals()["fc1_output"]
    mod = mx.mod.Module(sym, data_names=["data"], label_names=None, context=mx.cpu())
    mod.bind([("data", x.shape)], for_training=False)
    mod.set_params(args, auxs, allow_extra=True)
    mod.forward(mx.io.DataBatch([mx.nd.array(x)]), is_train=False)
    return mod.get_outputs()[0].asnumpy()


def images(n: int, seed: int = 1) -> np.ndarray:
    """(n, 3, 112, 112) float32 raw RGB in 0..255."""
    return np.random.RandomState(seed).randint(0, 256, (n, 3, 112, 112)).astype(np.float32)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
