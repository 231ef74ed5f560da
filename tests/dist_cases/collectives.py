"""Cases for pfc_mx.dist: every collective with values that depend on the rank."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import mxnet as mx
import numpy as np

from pfc_mx import dist
from tests.dist_cases import case


def rank_values(rank: int, rows: int = 3) -> np.ndarray:
    """A (rows, 4) float32 array that differs per rank and per element."""
    return (np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) + 100 * rank) * (-1) ** rank


@case
def collectives(outdir: Path) -> Dict[str, np.ndarray]:
    r = dist.rank()
    x = mx.nd.array(rank_values(r))
    # ranks hold a different number of rows: allgather must concatenate them in rank order
    ragged = mx.nd.array(rank_values(r, rows=r + 1))
    root_value = mx.nd.array(rank_values(r)) if r == 1 else mx.nd.zeros((3, 4))
    obj = dist.broadcast_object({"from": r, "list": [r] * 3}, root=1)
    return {
        "input": x.asnumpy(),
        "allgather": dist.allgather(x).asnumpy(),
        "allgather_ragged": dist.allgather(ragged).asnumpy(),
        "allgather_int": dist.allgather(mx.nd.array([r, 10 + r], dtype="int32")).asnumpy(),
        "sum": dist.allreduce(x, op="sum").asnumpy(),
        "max": dist.allreduce(x, op="max").asnumpy(),
        "min": dist.allreduce(x, op="min").asnumpy(),
        "grouped_sum": np.stack([a.asnumpy() for a in dist.grouped_allreduce([x, x * 2], op="sum")]),
        "broadcast": dist.broadcast(root_value, root=1).asnumpy(),
        "broadcast_object_from": np.array(obj["from"]),
        "world": np.array([dist.rank(), dist.size(), dist.local_rank()]),
    }
