"""The labels' all-gather and its wire header: every rank's input checked on every rank.

    y_all = gather_labels(y, B, D, "float32", Agreed(C, D, "stock", margin, scale, 0.0), world=W)
    # (N,) int64 class ids of all ranks in rank order, N = W·B; ValueError on every rank when one is wrong

Each rank sends one int64 array, a header of 14 values and then its labels as class ids:

    B, D (-1: not 2-D), number of labels, kernels (code: options.IMPLEMENTATIONS), dtype code (EMBEDDING_DTYPES),
    C, m1, m2, m3, scale, threshold, problem (LABEL_PROBLEMS), position, value

(floats as their int64 bit patterns, so they travel exactly). The ranks must agree
on all but the last three, which name this rank's first bad label. The head's
implementations' losses differ in their last bits, and the embeddings travel as raw values of one
dtype. Every check runs on the gathered headers, so a bad input on one rank raises
ValueError on every rank instead of leaving the others waiting in a collective.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import mxnet as mx
import numpy as np

from pfc_mx import dist
from pfc_mx.head.arrays import host_array
from pfc_mx.head.options import IMPLEMENTATIONS

EMBEDDING_DTYPES = ("float32", "float16", "float64", "bfloat16")  # dtype codes (another dtype: len(...))
LABEL_PROBLEMS = ("", "are not numbers", "is not a whole number", "is outside [0, {c})")  # problem codes
SETTINGS = slice(5, 11)  # header fields C … threshold


@dataclass(frozen=True)
class Agreed:
    """What every rank's head must hold the same (the dimension: also every rank's embeddings)."""
    num_classes: int
    embedding_size: int
    kernels: str             # the implementation: one of options.IMPLEMENTATIONS
    margin: Sequence[float]  # (m1, m2, m3)
    scale: float
    threshold: float


def class_ids(y: np.ndarray, num_classes: int) -> Tuple[np.ndarray, Tuple[int, int, float]]:
    """Labels (any shape, integer or float) as int64 class ids, and (problem, position, value) of the first bad one.

    problem indexes LABEL_PROBLEMS (0: none; the ids are then exact). Checked before any
    cast, so that 2**32 + 3, 3.9 or NaN can never pass as a valid class.
    """
    y = np.asarray(y).reshape(-1)
    ids = np.zeros(len(y), dtype=np.int64)
    if y.dtype.kind not in "iuf":
        return ids, (1, 0, float("nan"))
    if y.dtype.kind == "f":
        bad = ~np.isfinite(y) | (y != np.floor(y))
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            return ids, (2, first, float(y[first]))
    outside = (y < 0) | (y >= num_classes)
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        return ids, (3, first, float(y[first]))
    return y.astype(np.int64), (0, 0, 0.0)


def float_bits(values: Sequence[float]) -> list:
    """float64 values as int64 bit patterns (to travel in an integer header exactly)."""
    return np.asarray(values, dtype=np.float64).view(np.int64).tolist()


def gather_labels(y: np.ndarray, batch: int, dim: int, dtype: str, agreed: Agreed, world: int) -> np.ndarray:
    """All ranks' labels (N,) as int64 class ids, in rank order; ValueError on every rank if any rank is wrong.

    y: this rank's labels; batch, dim, dtype: its embeddings' B, D (-1 when not 2-D) and dtype name.
    """
    code = EMBEDDING_DTYPES.index(dtype) if dtype in EMBEDDING_DTYPES else len(EMBEDDING_DTYPES)
    ids, (problem, position, value) = class_ids(y, agreed.num_classes)
    settings = [agreed.num_classes, *float_bits([*agreed.margin, agreed.scale, agreed.threshold])]
    kernels = IMPLEMENTATIONS.index(agreed.kernels)
    header = [batch, dim, len(ids), kernels, code, *settings, problem, position, *float_bits([value])]
    packed = dist.allgather(host_array(np.concatenate([header, ids]), "int64", mx.cpu()), name="pfc_mx.pfc.labels")
    headers, parts = _unpack(packed.asnumpy(), world, len(header))
    _check(headers, agreed)
    return np.concatenate(parts)


def _unpack(packed: np.ndarray, world: int, k: int) -> Tuple[List[Tuple[int, ...]], List[np.ndarray]]:
    """Split the gathered array into each rank's header (k values) and labels."""
    headers, parts, pos = [], [], 0
    for _ in range(world):
        headers.append(tuple(int(v) for v in packed[pos:pos + k]))
        parts.append(packed[pos + k:pos + k + headers[-1][2]])
        pos += k + headers[-1][2]
    return headers, parts


def _check(headers: List[Tuple[int, ...]], agreed: Agreed) -> None:
    """Raise the first disagreement or bad label of the gathered headers (the same on every rank)."""
    ranks = f"on ranks 0..{len(headers) - 1}"
    sizes, dims, counts, kernels, dtypes = (list(col) for col in zip(*[h[:5] for h in headers]))
    if len(set(sizes)) != 1:
        raise ValueError(f"every rank must pass the same batch size, got {sizes} {ranks}")
    if set(dims) != {agreed.embedding_size}:
        raise ValueError(f"embeddings must be (B, {agreed.embedding_size}), got dimension {dims} per rank "
                         "(-1: not 2-D)")
    if counts != sizes:
        raise ValueError(f"got {counts} labels for {sizes} embeddings per rank")
    if sizes[0] == 0:
        raise ValueError("got an empty batch (0 embeddings on every rank); a step needs at least one sample")
    if len(set(dtypes)) != 1:  # the embeddings are exchanged as raw values of one dtype
        names = [EMBEDDING_DTYPES[c] if c < len(EMBEDDING_DTYPES) else "other" for c in dtypes]
        raise ValueError(f"every rank must pass embeddings of the same dtype, got {names} {ranks}")
    if len(set(kernels)) != 1:  # the ranks would compute the loss in different ways
        raise ValueError(f"ranks disagree on the Partial FC kernels ({[IMPLEMENTATIONS[k] for k in kernels]} {ranks}); "
                         "set partial_fc.kernels (or PFC_MX_KERNELS) to one value, and to 'stock' rather than "
                         "'auto' where the fused kernels do not load on every host")
    if len({h[SETTINGS] for h in headers}) != 1:  # shards and softmax would not fit together
        shown = [(h[5], *np.asarray(h[6:SETTINGS.stop], np.int64).view(np.float64).tolist()) for h in headers]
        raise ValueError(f"ranks disagree on the Partial FC settings (num_classes, m1, m2, m3, scale, "
                         f"interclass threshold): {shown} {ranks}")
    for r, h in enumerate(headers):
        problem, position = h[-3], h[-2]
        if problem == 1:
            raise ValueError(f"labels must be class ids (integers), got labels that {LABEL_PROBLEMS[1]} on rank {r}")
        if problem:
            v = float(np.int64(h[-1]).view(np.float64))
            shown = int(v) if np.isfinite(v) and v == int(v) else v
            what = LABEL_PROBLEMS[problem].format(c=agreed.num_classes)
            raise ValueError(f"label {shown} (rank {r}, position {position}) {what}")
