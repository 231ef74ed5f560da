"""What the ranks keep equal about the backbone: summed gradients and averaged batch-norm statistics."""
from __future__ import annotations

import math
from typing import List

import mxnet as mx
from mxnet import gluon

from pfc_mx import dist


def sum_gradients(params: List[gluon.Parameter], grad_clip: float) -> float:
    """Sum backbone gradients over ranks in place; return their global L2 norm, clip to grad_clip if > 0.

    The norm is the same on every rank (it is taken after the sum), so a non-finite norm stops
    or skips the step on all ranks alike. One host sync per step.
    """
    grads = [p.grad() for p in params]
    if dist.size() > 1:
        dist.grouped_allreduce(grads, op="sum", name="pfc_mx.backbone_grads", inplace=True)
    norm = math.sqrt(float(mx.nd.multi_sum_sq(*grads, num_arrays=len(grads)).sum().asscalar()))
    if grad_clip > 0 and math.isfinite(norm) and norm > grad_clip:
        for g in grads:
            g *= grad_clip / norm
    return norm


def running_stats(net: gluon.HybridBlock) -> List[gluon.Parameter]:
    """The batch-norm running means and variances (parameters without gradient)."""
    return [p for p in net.collect_params().values() if p.grad_req == "null"]


def average_running_stats(net: gluon.HybridBlock) -> None:
    """Set batch-norm running means and variances to their average over ranks.

    Each rank updates them from its own batches; averaging before an evaluation or a
    checkpoint makes every rank (and the saved backbone) use the same statistics.
    """
    if dist.size() == 1:
        return
    stats = running_stats(net)
    values = [p.data().copy() for p in stats]
    for p, total in zip(stats, dist.grouped_allreduce(values, op="sum", name="pfc_mx.bn_stats")):
        p.set_data(total / dist.size())
