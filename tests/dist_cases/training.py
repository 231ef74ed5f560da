"""Cases for the training loop: reload centers on any world size; the ranks' backbone gradients and BN statistics."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.gluon import nn

from pfc_mx import checkpoint, dist
from pfc_mx.head import PartialFC
from pfc_mx.train.sync import average_running_stats, running_stats, sum_gradients
from tests.dist_cases import case

GRAD_CLIP = 0.5  # below the summed gradients' norm, so the clip acts


def small_net() -> gluon.HybridBlock:
    """Dense → BatchNorm → Dense with the same seeded weights in every process."""
    net = nn.HybridSequential(prefix="sync_")
    with net.name_scope():
        net.add(nn.Dense(5, in_units=4), nn.BatchNorm(in_channels=5), nn.Dense(3, in_units=5))
    net.initialize()
    rng = np.random.default_rng(7)
    for _, p in sorted(net.collect_params().items()):
        p.set_data(mx.nd.array(rng.normal(size=p.shape) if p.grad_req != "null" else p.data().asnumpy()))
    return net


def local_step(net: gluon.HybridBlock, rank: int) -> List[gluon.Parameter]:
    """One forward/backward in training mode on this rank's own (6, 4) batch; the trainable parameters."""
    x = mx.nd.array(np.random.default_rng([1, rank]).normal(size=(6, 4)))
    with autograd.record():
        loss = (net(x) ** 2).sum()
    loss.backward()
    return [p for _, p in sorted(net.collect_params().items()) if p.grad_req != "null"]


def stats_of(net: gluon.HybridBlock) -> np.ndarray:
    return np.concatenate([p.data().asnumpy().ravel() for p in running_stats(net)])


@case
def backbone_sync(outdir: Path) -> Dict[str, np.ndarray]:
    """sum_gradients (with a clip) and average_running_stats over the ranks."""
    net = small_net()
    params = local_step(net, dist.rank())
    norm = sum_gradients(params, GRAD_CLIP)
    average_running_stats(net)
    return {"grads": np.concatenate([p.grad().asnumpy().ravel() for p in params]), "norm": np.array(norm),
            "stats": stats_of(net)}


def reference_sync(world: int) -> Tuple[np.ndarray, float, np.ndarray]:
    """In one process: the ranks' gradients summed then clipped, their norm, their BN statistics averaged."""
    grads, stats = [], []
    for r in range(world):
        net = small_net()
        grads.append(np.concatenate([p.grad().asnumpy().ravel() for p in local_step(net, r)]))
        stats.append(stats_of(net))
    total = np.sum(grads, axis=0, dtype=np.float64)
    norm = float(np.sqrt((total ** 2).sum()))
    return total * min(1.0, GRAD_CLIP / norm), norm, np.mean(stats, axis=0)


@case
def reload_centers(outdir: Path, data: str, out: str) -> Dict[str, np.ndarray]:
    """Load the newest checkpoint of `out` into this rank's PartialFC shard."""
    found = checkpoint.find_resumable(Path(out) / "checkpoints")
    state = found.state
    pfc = PartialFC(state["num_classes"], state["embedding_size"])
    w, m = checkpoint.load_centers(found.path, pfc.class_start, pfc.num_local, state["embedding_size"])
    return {"weight": w, "momentum": m, "start": np.array(pfc.class_start)}


def fused_backbone(rank: int) -> Tuple[gluon.HybridBlock, np.ndarray]:
    """iresnet_tiny with seeded weights, hybridized with the fused BatchNorm (opt-in: set here), after
    one training step on this rank's own (2, 3, 112, 112) batch; its training graph's fused flag."""
    import symbols
    from symbols import batchnorm

    batchnorm.set_kernels("fused")
    try:
        net = symbols.get_model("iresnet_tiny", embedding_size=8)
        net.initialize()
        rng = np.random.default_rng(11)
        for _, p in sorted(net.collect_params().items()):
            if p.grad_req != "null":
                p.set_data(mx.nd.array(rng.normal(scale=0.1, size=p.shape) + (1 if p.name.endswith("_gamma") else 0)))
        net.hybridize(static_alloc=True, static_shape=True)
        images = mx.nd.array(np.random.default_rng([2, rank]).uniform(0, 255, (2, 3, 112, 112)))
        with autograd.record():
            emb = net(images)
        emb.backward(mx.nd.ones_like(emb))
        # MXNet's own BatchNorm (fc1, bn1, bn3, sc here) writes its moving statistics in the hybridized
        # backward without reads waiting for it: reading them right after can see the old values
        mx.nd.waitall()
    finally:
        batchnorm.set_kernels(None)
    return net, np.array(batchnorm.fused_in(net))


@case
def fused_backbone_sync(outdir: Path) -> Dict[str, np.ndarray]:
    """average_running_stats over the ranks after a training step with the fused BatchNorm."""
    net, fused = fused_backbone(dist.rank())
    average_running_stats(net)
    return {"stats": stats_of(net), "fused": fused}
