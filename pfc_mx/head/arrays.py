"""NDArrays the head makes from host data: without waiting for the engine, empty shards allowed."""
from __future__ import annotations

from typing import Any, Tuple

import mxnet as mx
import numpy as np


def host_array(a: Any, dtype: str, ctx: mx.Context) -> mx.nd.NDArray:
    """NumPy data as an NDArray on ctx without waiting for the engine.

    mx.nd.array copies through a synchronous write that queues behind every
    operator already pushed (the step's products, say); this wraps a private
    copy of the data in place (DLPack) and moves it to ctx asynchronously.
    """
    data = mx.nd.from_numpy(np.array(a, dtype=dtype, order="C"), zero_copy=True)
    return data if ctx.device_type == "cpu" else data.as_in_context(ctx)


def zeros(shape: Tuple[int, int], ctx: mx.Context) -> mx.nd.NDArray:
    """Zero float32 array; (0, D) is allowed (an empty shard when C < W)."""
    with mx.util.np_shape(shape[0] == 0):
        return mx.nd.zeros(shape, ctx=ctx, dtype="float32")


def large_arrays() -> bool:
    """Whether this MXNet build allocates arrays beyond shard.MAX_ARRAY_ELEMENTS (USE_INT64_TENSOR_SIZE).

    The released mxnet wheels do not: at D = 512 a rank then holds at most 4,194,303 classes.
    """
    return mx.runtime.Features().is_enabled("INT64_TENSOR_SIZE")
