"""The only door to Horovod: ranks, collectives and the training context.

Usage::

    from pfc_mx import dist
    dist.init()                       # hvd.init() under horovodrun, else a size-1 world
    x = mx.nd.ones((4, 512), ctx=dist.context())
    X = dist.allgather(x)             # (4 * dist.size(), 512), rank order
    X = dist.gather_rows(x)           # the same when every rank has the same shape, without blocking
    m = dist.allreduce(x, op="max")   # element-wise max over ranks

Every collective takes and returns MXNet NDArrays. In the size-1 fallback (the
process was not started by horovodrun) each collective returns its input
unchanged, so single-process code and tests need no special case. Math modules
never import horovod; they call these functions.
"""
from __future__ import annotations

import itertools
import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import mxnet as mx
import numpy as np

log = logging.getLogger(__name__)

_hvd: Any = None  # horovod.mxnet once init() ran under horovodrun
_OPS = ("sum", "max", "min")
_calls = itertools.count()  # numbers unnamed collectives in program order
_zero_blocks: Dict[Tuple[Tuple[int, ...], str, str], mx.nd.NDArray] = {}  # gather_rows' padding by shape


def _name(kind: str, name: Optional[str]) -> str:
    """The Horovod tensor name: the caller's, else `kind.N` numbered at call time.

    Horovod's own fallback numbers unnamed ops when MXNet's engine runs them, and the
    engine may run independent ops (two all-gathers, a gradient all-reduce and the next
    step's all-gather) in a different order on each rank; the ranks would then pair
    different tensors. Every rank makes the same calls in the same order, so numbering
    them here gives matching names.
    """
    return name if name is not None else f"pfc_mx.{kind}.{next(_calls)}"


def launched_by_horovodrun() -> bool:
    """True when horovodrun (or mpirun with Horovod's env) started this process."""
    return "HOROVOD_RANK" in os.environ or "OMPI_COMM_WORLD_RANK" in os.environ


def init(force_single: bool = False) -> None:
    """Initialise Horovod when launched by horovodrun; otherwise stay a size-1 world.

    force_single: never import horovod (a tool that must run as one process).
    Calling init() twice is harmless.
    """
    global _hvd
    if _hvd is not None or force_single or not launched_by_horovodrun():
        return
    import horovod.mxnet as hvd  # the one import of horovod in the project

    hvd.init()
    _hvd = hvd
    log.debug("horovod initialised: rank %d of %d", hvd.rank(), hvd.size())


def is_initialized() -> bool:
    """True when collectives go through Horovod (not the size-1 fallback)."""
    return _hvd is not None


def rank() -> int:
    return _hvd.rank() if _hvd is not None else 0


def size() -> int:
    return _hvd.size() if _hvd is not None else 1


def local_rank() -> int:
    return _hvd.local_rank() if _hvd is not None else 0


def context() -> mx.Context:
    """mx.gpu(local_rank) when this MXNet build sees a GPU, else mx.cpu()."""
    try:
        num_gpus = mx.context.num_gpus()
    except mx.MXNetError:  # CPU-only build
        num_gpus = 0
    return mx.gpu(local_rank() % num_gpus) if num_gpus > 0 else mx.cpu()


def _op_check(op: str) -> None:
    if op not in _OPS:
        raise ValueError(f"allreduce op must be one of {_OPS}, got {op!r}")


def _op(op: str) -> Any:
    _op_check(op)
    return {"sum": _hvd.Sum, "max": _hvd.Max, "min": _hvd.Min}[op]


def allreduce(x: mx.nd.NDArray, op: str = "sum", name: Optional[str] = None,
              inplace: bool = False) -> mx.nd.NDArray:
    """Element-wise reduction of x over ranks; op is 'sum', 'max' or 'min'. Same shape as x.

    inplace: the result overwrites x (no zero-filled output array is made).
    """
    if _hvd is None:
        _op_check(op)
        return x
    reduce = _hvd.allreduce_ if inplace else _hvd.allreduce
    return reduce(x, op=_op(op), name=_name("allreduce", name))


def grouped_allreduce(xs: Sequence[mx.nd.NDArray], op: str = "sum", name: Optional[str] = None,
                      inplace: bool = False) -> List[mx.nd.NDArray]:
    """allreduce of several arrays in one fused collective; returns a list in the same order.

    inplace: the results overwrite xs (no output arrays are made).
    """
    if _hvd is None:
        _op_check(op)
        return list(xs)
    reduce = _hvd.grouped_allreduce_ if inplace else _hvd.grouped_allreduce
    return list(reduce(list(xs), op=_op(op), name=_name("grouped_allreduce", name)))


def allgather(x: mx.nd.NDArray, name: Optional[str] = None) -> mx.nd.NDArray:
    """Concatenate x from all ranks along axis 0, in rank order.

    x: (n_r, ...) where n_r may differ between ranks; returns (sum n_r, ...).
    """
    if _hvd is None:
        return x
    return _hvd.allgather(x, name=_name("allgather", name))


def gather_rows(x: mx.nd.NDArray, name: Optional[str] = None) -> mx.nd.NDArray:
    """allgather of arrays with the same shape and dtype on every rank, without blocking: (W·n, ...) in rank order.

    Horovod's allgather returns only once it is done (it sizes its output then), so
    Python cannot queue the next operators while the ranks exchange. Here each rank
    places its rows between blocks of zeros (one concat) and the ranks sum in place: every
    element has one nonzero term, so the values arrive exactly (-0.0 becomes +0.0),
    and the call returns at once.
    """
    if _hvd is None:
        return x
    key = (tuple(x.shape), str(x.dtype), str(x.context))
    zero = _zero_blocks.get(key)
    if zero is None:  # kept: the same shapes come back every step
        zero = _zero_blocks[key] = mx.nd.zeros(x.shape, ctx=x.context, dtype=x.dtype)
    blocks = [zero] * rank() + [x] + [zero] * (size() - rank() - 1)
    out = mx.nd.concat(*blocks, dim=0)  # one operator; a new array, so the summing may overwrite it
    return allreduce(out, op="sum", name=_name("gather_rows", name), inplace=True)


def broadcast(x: mx.nd.NDArray, root: int = 0, name: Optional[str] = None) -> mx.nd.NDArray:
    """Return root's x on every rank, bit for bit (same shape and dtype on all ranks required).

    Horovod's own MXNet broadcast is not used: in 0.28.1 its enqueue reads the op's name
    after handing the op to the background thread, which may already have completed it and
    freed the name (a use-after-free that now and then crashes a rank with a segmentation
    fault, most often on one rank). Instead root's bytes are all-reduced (summed) with zeros
    from the other ranks: the same bits arrive, -0.0 and NaN payloads included. Host round
    trip; meant for start-up and checkpoint traffic, not for the training step.
    """
    if _hvd is None:
        return x
    value = np.ascontiguousarray(x.asnumpy())
    raw = value.reshape(-1).view(np.uint8) if rank() == root else np.zeros(value.nbytes, np.uint8)
    if raw.size == 0:
        return x.copy()
    total = allreduce(mx.nd.array(raw, ctx=x.context, dtype="uint8"), op="sum", name=_name("broadcast", name))
    return mx.nd.array(total.asnumpy().view(value.dtype).reshape(value.shape), ctx=x.context, dtype=x.dtype)


def broadcast_parameters(params: Any, root: int = 0) -> None:
    """Overwrite a Gluon ParameterDict in place with root's values (all its contexts).

    Values travel as fresh default-layout arrays: after a forward pass MXNet's CPU
    (MKLDNN) kernels may keep weights in a blocked layout that Horovod cannot read.
    """
    if _hvd is None:
        return
    for key in sorted(params.keys()):
        p = params[key]
        value = p.data()
        fresh = mx.nd.array(value.asnumpy(), ctx=value.context, dtype=value.dtype)
        p.set_data(broadcast(fresh, root=root, name=f"pfc_mx.param.{key}"))


def broadcast_object(obj: Any, root: int = 0, name: Optional[str] = None) -> Any:
    """Return root's picklable object on every rank (an object all-gather; see broadcast())."""
    if _hvd is None:
        return obj
    return allgather_object(obj if rank() == root else None, name=_name("broadcast_object", name))[root]


def allgather_object(obj: Any, name: Optional[str] = None) -> List[Any]:
    """List of every rank's picklable object, in rank order."""
    if _hvd is None:
        return [obj]
    return _hvd.allgather_object(obj, name=_name("allgather_object", name))


def barrier() -> None:
    """Block until every rank reaches this point."""
    if _hvd is None:
        return
    allreduce(mx.nd.zeros((1,))).wait_to_read()


def shutdown() -> None:
    """Shut Horovod down (end of a run); the module falls back to size 1."""
    global _hvd
    if _hvd is not None:
        _hvd.shutdown()
        _hvd = None

