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


def special_values() -> np.ndarray:
    """float32 values a sum would change: -0.0, a NaN with a payload, the smallest subnormal, -inf."""
    return np.array([0x80000000, 0x7FC00123, 0x00000001, 0xFF800000], np.uint32).view(np.float32)


@case
def broadcast_storm(outdir: Path, calls: int = 2000) -> Dict[str, np.ndarray]:
    """Many small broadcasts whose results are dropped at once while new arrays are allocated.

    With Horovod 0.28.1's own MXNet broadcast this crashed one rank in a few thousand calls
    (a use-after-free of the op name, see pfc_mx.dist.broadcast) in about one run of five;
    so Horovod's broadcasts are also made to fail outright here.
    """
    def forbidden(*args, **kwargs):
        raise AssertionError("Horovod's own broadcast was called")

    for attr in ("broadcast", "broadcast_", "broadcast_object"):
        setattr(dist._hvd, attr, forbidden)
    total = 0.0
    for i in range(calls):
        total += float(dist.broadcast(mx.nd.full((8,), i), root=0, name=f"storm.{i}").sum().asscalar())
        mx.nd.zeros((64, 64)).wait_to_read()
    return {"total": np.array(total)}


@case
def collectives(outdir: Path) -> Dict[str, np.ndarray]:
    r = dist.rank()
    x = mx.nd.array(rank_values(r))
    # ranks hold a different number of rows: allgather must concatenate them in rank order
    ragged = mx.nd.array(rank_values(r, rows=r + 1))
    root_value = mx.nd.array(rank_values(r)) if r == 1 else mx.nd.zeros((3, 4))
    obj = dist.broadcast_object({"from": r, "list": [r] * 3}, root=1)
    inplace = mx.nd.array(rank_values(r))
    inplace_out = dist.allreduce(inplace, op="sum", inplace=True)
    grouped_inplace = [mx.nd.array(rank_values(r)), mx.nd.array(rank_values(r)) * 2]
    dist.grouped_allreduce(grouped_inplace, op="sum", inplace=True)
    return {
        "input": x.asnumpy(),
        "allgather": dist.allgather(x).asnumpy(),
        "allgather_ragged": dist.allgather(ragged).asnumpy(),
        "allgather_int": dist.allgather(mx.nd.array([r, 10 + r], dtype="int32")).asnumpy(),
        "sum": dist.allreduce(x, op="sum").asnumpy(),
        "max": dist.allreduce(x, op="max").asnumpy(),
        "min": dist.allreduce(x, op="min").asnumpy(),
        "sum_inplace": inplace.asnumpy(),
        "sum_inplace_is_input": np.array(inplace_out is inplace),
        "gather_rows": dist.gather_rows(x).asnumpy(),
        "gather_rows_f16": dist.gather_rows(mx.nd.array(rank_values(r), dtype="float16")).asnumpy(),
        "gather_rows_bits": dist.gather_rows(mx.nd.array(special_values() if r == 0 else rank_values(r)[0])
                                             ).asnumpy().view(np.uint32),
        "grouped_sum": np.stack([a.asnumpy() for a in dist.grouped_allreduce([x, x * 2], op="sum")]),
        "grouped_sum_inplace": np.stack([a.asnumpy() for a in grouped_inplace]),
        "broadcast": dist.broadcast(root_value, root=1).asnumpy(),
        "broadcast_bits": dist.broadcast(mx.nd.array(special_values() if r == 1 else np.zeros(4, np.float32)),
                                         root=1).asnumpy().view(np.uint32),
        "broadcast_f16": dist.broadcast(mx.nd.array(rank_values(r), dtype="float16"), root=1).asnumpy(),
        "broadcast_int64": dist.broadcast(mx.nd.array([r, -r, 2**40 + r], dtype="int64"), root=1).asnumpy(),
        "broadcast_object_from": np.array(obj["from"]),
        "world": np.array([dist.rank(), dist.size(), dist.local_rank()]),
    }
