"""Partial FC: this rank's shard of class centers, sampled margin softmax, sparse center updates.

    pfc = PartialFC(num_classes, 512, margin=(1.0, 0.5, 0.0), sample_rate=0.1, ctx=dist.context())
    with autograd.record():
        emb = backbone(images)                                 # (B, D) on this rank
    loss, grad = pfc.forward_backward(emb.detach(), labels)   # global mean loss, dL/d emb (B, D)
    emb.backward(grad); trainer.step(1); pfc.step(lr, momentum=0.9, wd=5e-4)

Math of one step (shared/DESIGN.md §3, steps 3–11): embeddings and labels are
gathered from every rank (N = W·B rows, every rank must hold the same B);
rank r owns classes [class_start, class_start + num_local); a step uses every
positive class of the shard plus uniform negatives (sample_rate < 1), samples
differ per rank and per step (seed, rank, step); logits s·cos with the combined
margin on the target entry (pfc_mx.margin); the softmax is normalised over all
ranks (allreduce of per-row log-normalisers); the embedding gradient is summed
over ranks and each rank returns its own B rows. step() applies MXNet's SGD
momentum update (the `sgd_mom_update` operator that mx.optimizer.SGD uses:
mom = momentum·mom − lr·(grad + wd·w); w += mom, rescale_grad 1) to the rows of
the last step only; every other row keeps weight and momentum bit for bit
(MXNet logs once that such lazy row-sparse updates differ from dense ones:
that difference is the point here).

Checkpoints by global class range (elastic resume on another world size):
``get_shard()`` → (class_start, weight, momentum) as NumPy arrays of this shard;
``set_rows(global_start, weight, momentum)`` writes the part of rows
[global_start, global_start + len(weight)) that falls in this shard (call it
with every stored range, or with this shard's own range); ``set_step(step)``
restores the sampling stream. Initial centers are N(0, 0.01) per global class
(pfc_mx.shard), identical for any world size.

Two implementations of the same math, chosen by ``kernels`` (default: the
PFC_MX_KERNELS environment variable, else "auto"):
- "fused" (auto on CPU): the operators of pfc_mx.kernels (C++, built once per
  machine). One pass gathers the used rows already normalised, one pass does
  margin + softmax + log-normaliser over the logits in place (no pass over
  N × S after it: dL/dcos is a row factor times that softmax off the targets,
  so the factors go on the N × D side of the products), one combines the
  ranks' sums into the loss, and the update assembles each row's gradient
  (target entries, the term through w / ν) inside its own pass; around them
  only the three matrix products and the gradient through the embeddings'
  normalisation. Every rank must use the same implementation (checked with
  the labels).
- "stock" (GPUs, or when the kernels cannot be built): stock MXNet operators.
  Centers are never normalised into a copy: their norms ν come from one
  reading pass and 1/ν is folded into the (N, S) matrices.
Both are tested against the same references and against each other.

Memory per rank: weight + momentum (num_local × D float32 each; ``centers_on=
"host"`` keeps them in host memory and moves only the used rows), plus a
workspace reused across steps: one S × D buffer (the used rows, later the
center gradient) and N × S logits; the stock path adds N × S probabilities
(which become the logit gradient) and a further N × S with inter-class
filtering, and with every row used on-device it reads the centers where they
are. Embeddings may be float16 (every rank the same dtype); all softmax math
is float32.

Collectives per step: the labels (an all-gather the host waits for: it plans
the step from them), then the embeddings, the softmax sums and the embedding
gradient, queued without waiting (dist.gather_rows, in-place all-reduce) so
that Python queues the whole step while the ranks exchange.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import mxnet as mx
import numpy as np

from pfc_mx import dist
from pfc_mx import fc_math as fm
from pfc_mx import kernels as pfc_kernels
from pfc_mx.margin import get_margin, keep_mask, target_logit_and_derivative
from pfc_mx.shard import MAX_ARRAY_ELEMENTS, init_center_rows, min_world, plan_step, shard_range, step_rng

log = logging.getLogger(__name__)

LOWEST = float(np.finfo(np.float32).min)  # log-normaliser of a rank without columns
EMBEDDING_DTYPES = ("float32", "float16", "float64", "bfloat16")  # codes of the labels' header
UPDATE_CHUNK_BYTES = 4 << 20              # rows per sparse-update call: 4 MiB of gradient
LABEL_PROBLEMS = ("", "are not numbers", "is not a whole number", "is outside [0, {c})")  # codes of the header


def _class_ids(y: np.ndarray, num_classes: int) -> Tuple[np.ndarray, Tuple[int, int, float]]:
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


def _large_arrays() -> bool:
    """Whether this MXNet build allocates arrays beyond MAX_ARRAY_ELEMENTS (USE_INT64_TENSOR_SIZE).

    The released mxnet wheels do not: at D = 512 a rank then holds at most 4,194,303 classes.
    """
    return mx.runtime.Features().is_enabled("INT64_TENSOR_SIZE")


def _float_bits(values: Sequence[float]) -> list:
    """float64 values as int64 bit patterns (to travel in an integer header exactly)."""
    return np.asarray(values, dtype=np.float64).view(np.int64).tolist()


def _host_array(a: Any, dtype: str, ctx: mx.Context) -> mx.nd.NDArray:
    """NumPy data as an NDArray on ctx without waiting for the engine.

    mx.nd.array copies through a synchronous write that queues behind every
    operator already pushed (the step's products, say); this wraps a private
    copy of the data in place (DLPack) and moves it to ctx asynchronously.
    """
    data = mx.nd.from_numpy(np.array(a, dtype=dtype, order="C"), zero_copy=True)
    return data if ctx.device_type == "cpu" else data.as_in_context(ctx)


def _zeros(shape: Tuple[int, int], ctx: mx.Context) -> mx.nd.NDArray:
    """Zero float32 array; (0, D) is allowed (an empty shard when C < W)."""
    with mx.util.np_shape(shape[0] == 0):
        return mx.nd.zeros(shape, ctx=ctx, dtype="float32")


class PartialFC:
    """The Partial FC head of one rank (see the module docstring)."""

    def __init__(self, num_classes: int, embedding_size: int, margin: Union[str, Sequence[float]] = (1.0, 0.5, 0.0),
                 scale: float = 64.0, sample_rate: float = 1.0, interclass_filtering_threshold: float = 0.0,
                 ctx: Optional[mx.Context] = None, seed: int = 0, centers_on: str = "device",
                 kernels: Optional[str] = None) -> None:
        if num_classes < 1 or embedding_size < 1:
            raise ValueError(f"need num_classes >= 1 and embedding_size >= 1, got {num_classes}, {embedding_size}")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if not 0 <= interclass_filtering_threshold < 1:
            raise ValueError(f"interclass_filtering_threshold must be in [0, 1), got {interclass_filtering_threshold}")
        if centers_on not in ("device", "host"):
            raise ValueError(f"centers_on must be 'device' or 'host', got {centers_on!r}")
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        kernels = kernels if kernels is not None else os.environ.get("PFC_MX_KERNELS", "auto")
        if kernels not in ("auto", "fused", "stock"):
            raise ValueError(f"kernels (or PFC_MX_KERNELS) must be 'auto', 'fused' or 'stock', got {kernels!r}")
        self.num_classes, self.embedding_size = int(num_classes), int(embedding_size)
        self.margin = get_margin(margin)
        self.scale, self.sample_rate = float(scale), float(sample_rate)
        self.threshold = float(interclass_filtering_threshold)
        self.seed = int(seed)
        self.world, self.rank = dist.size(), dist.rank()
        self.ctx = ctx if ctx is not None else dist.context()
        self.store_ctx = mx.cpu() if centers_on == "host" else self.ctx
        self.fused = self._use_fused(kernels)
        self.class_start, self.num_local = shard_range(self.num_classes, self.world, self.rank)
        need = min_world(self.num_classes, self.embedding_size)  # the rule tools/plan.py applies too
        if self.world < need and not _large_arrays():
            raise ValueError(f"{self.num_classes} classes of dimension {self.embedding_size} on {self.world} rank(s) "
                             f"make shards beyond the {MAX_ARRAY_ELEMENTS:,} elements of one MXNet array in this build "
                             f"(without USE_INT64_TENSOR_SIZE); use at least {need} ranks")
        self.weight = _zeros((self.num_local, self.embedding_size), self.store_ctx)
        self.momentum = _zeros((self.num_local, self.embedding_size), self.store_ctx)
        for lo, hi, rows in init_center_rows(self.class_start, self.num_local, self.embedding_size, self.seed):
            self.weight[lo:hi]._sync_copyfrom(rows)  # straight into the view: no temporary NDArray per block
        self.last_index: Optional[np.ndarray] = None   # (S,) local rows used by the last step
        self._last_grad: Optional[mx.nd.NDArray] = None
        self._step = 0
        self._pending: Optional[Dict[str, Any]] = None
        self._ws: Dict[str, Any] = {}
        log.debug("rank %d: classes [%d, %d) of %d, D %d, sample rate %g, centers on %s", self.rank,
                  self.class_start, self.class_start + self.num_local, self.num_classes, self.embedding_size,
                  self.sample_rate, self.store_ctx)

    def _use_fused(self, kernels: str) -> bool:
        """Fused CPU kernels (pfc_mx.kernels) when asked or available; stock operators on GPUs."""
        if kernels == "stock" or (self.ctx.device_type != "cpu" and kernels == "auto"):
            return False
        if self.ctx.device_type != "cpu" or self.store_ctx.device_type != "cpu":
            raise ValueError("kernels='fused' needs CPU contexts; the fused kernels have no GPU version")
        if pfc_kernels.load():
            return True
        if kernels == "fused":
            raise RuntimeError(f"kernels='fused' but they cannot be loaded: {pfc_kernels.unavailable_reason()}")
        return False

    # ------------------------------------------------------------------ state
    def set_step(self, step: int) -> None:
        """Continue the sampling stream at step (after a resume)."""
        self._step = int(step)

    def get_shard(self) -> Tuple[int, np.ndarray, np.ndarray]:
        """(class_start, weight (num_local, D), momentum (num_local, D)) as float32 NumPy copies."""
        return self.class_start, self.weight.asnumpy(), self.momentum.asnumpy()

    def set_rows(self, global_start: int, weight: np.ndarray, momentum: Optional[np.ndarray] = None) -> int:
        """Write centers (and momentum) of global classes [global_start, +len(weight)) that this shard owns.

        Returns the number of rows written (0 when the range misses the shard).
        """
        weight = np.asarray(weight, dtype=np.float32)
        if weight.ndim != 2 or weight.shape[1] != self.embedding_size:
            raise ValueError(f"centers must be (n, {self.embedding_size}), got {weight.shape}")
        lo = max(global_start, self.class_start)
        hi = min(global_start + len(weight), self.class_start + self.num_local)
        if lo >= hi:
            return 0
        src, dst = slice(lo - global_start, hi - global_start), slice(lo - self.class_start, hi - self.class_start)
        self.weight[dst] = weight[src]
        if momentum is not None:
            self.momentum[dst] = np.asarray(momentum, dtype=np.float32)[src]
        return hi - lo

    @property
    def last_grad(self) -> Optional[mx.nd.NDArray]:
        """(S, D) dL/d weight[last_index] of the last forward_backward; None before it and after step().

        The fused path never writes this array during training (the update combines
        its parts in its own pass); it is assembled here on first access, in float64.
        """
        if self._last_grad is None and self._pending is not None and "fused" in self._pending:
            g = self._pending["grad"].asnumpy().astype(np.float64)
            wnorm, xn, tcol, tcoef = (a.asnumpy() for a in self._pending["fused"])
            rows = np.flatnonzero(tcol >= 0)
            np.add.at(g, tcol[rows], tcoef[rows, None].astype(np.float64) * xn[rows])
            w = self.weight.asnumpy()[self._pending["index"].asnumpy()].astype(np.float64)
            nu = wnorm.astype(np.float64)[:, None]
            grad = g / nu - w * (w * g).sum(1, keepdims=True) / nu ** 3
            self._last_grad = mx.nd.array(grad, ctx=self.ctx, dtype="float32")
        return self._last_grad

    # --------------------------------------------------------------- one step
    def forward_backward(self, embeddings: mx.nd.NDArray, labels: Any) -> Tuple[float, mx.nd.NDArray]:
        """Global mean loss (same on every rank) and its gradient w.r.t. embeddings (B, D), same dtype.

        embeddings: this rank's (B, D) float32 or float16; labels: (B,) class ids in [0, C).
        Collective: every rank calls it with the same B.
        """
        b = embeddings.shape[0]
        d = embeddings.shape[1] if embeddings.ndim == 2 else -1
        y = labels.asnumpy() if isinstance(labels, mx.nd.NDArray) else np.asarray(labels)
        all_labels = self._gather_labels(b, d, str(np.dtype(embeddings.dtype)), y)
        n = self.world * b
        # queued, not waited for: the ranks exchange embeddings while this host plans the step
        x_all = dist.gather_rows(embeddings.as_in_context(self.ctx), name="pfc_mx.pfc.embeddings")
        rng = step_rng(self.seed, self.rank, self._step) if self.sample_rate < 1 else None
        plan = plan_step(all_labels, self.class_start, self.num_local, self.sample_rate, rng)
        self._step += 1
        local = self._start_local(plan, n)
        # queued after the planning: a multi-threaded operator running beside this busy thread waits for it
        xn, xnorm = fm.normalize_rows(x_all if x_all.dtype == np.float32 else x_all.astype("float32"))
        self._local_forward(local, xn, n)
        # one collective for both softmax sums: every rank's (log-normaliser, target logit) rows
        parts = dist.gather_rows(local["parts"].reshape((1, 2, n)), name="pfc_mx.pfc.softmax_parts")
        if self.fused:
            lse, loss = mx.nd.pfc_softmax_loss(parts)
        else:
            lse = fm.combine_log_normalizers(parts[:, 0])
            loss = fm.softmax_ce_loss(lse, mx.nd.sum(parts[:, 1], axis=0))
        dxn = dist.allreduce(self._local_backward(local, lse, xn, n), op="sum", name="pfc_mx.pfc.embedding_grad",
                             inplace=True)
        if "center_grad" in local:  # queued after the all-reduce: the product runs while the ranks exchange dxn
            local["center_grad"]()
        rows = slice(self.rank * b, (self.rank + 1) * b)
        backward = mx.nd.pfc_normalize_grad if self.fused else fm.normalize_backward
        grad = backward(dxn[rows], xn[rows], xnorm[rows])
        # read the loss last: the backward is queued by then and runs while Python waits
        return float(loss.asscalar()), grad.astype(embeddings.dtype, copy=False)

    def step(self, lr: float, momentum: float = 0.9, wd: float = 5e-4) -> None:
        """SGD (MXNet semantics) on the rows used by the last forward_backward; other rows untouched."""
        if self._pending is None:
            raise RuntimeError("PartialFC.step() needs a forward_backward() first")
        pending, self._pending, self._last_grad = self._pending, None, None
        index, grad = pending["index"], pending["grad"]
        if grad is None:
            return
        if "fused" in pending:  # gradient assembled inside the update's pass
            mx.nd.pfc_sparse_sgd(self.weight, grad, self.momentum, index, *pending["fused"], lr=float(lr),
                                 momentum=float(momentum or 0.0), wd=float(wd), normalize=True, out=self.weight)
            return
        kw = dict(lr=float(lr), wd=float(wd), rescale_grad=1.0)
        if momentum:
            kw["momentum"] = float(momentum)
        if index is None and self.store_ctx == self.ctx:  # every row: the dense operator, in place
            if momentum:
                mx.nd.sgd_mom_update(self.weight, grad, self.momentum, out=self.weight, **kw)
            else:
                mx.nd.sgd_update(self.weight, grad, out=self.weight, **kw)
            return
        chunk = max(1, UPDATE_CHUNK_BYTES // (4 * self.embedding_size))
        shape = (self.num_local, self.embedding_size)
        for a in range(0, grad.shape[0], chunk):
            hi = min(a + chunk, grad.shape[0])
            rows = (index[a:hi] if index is not None
                    else mx.nd.arange(a, hi, ctx=self.store_ctx, dtype="int64"))
            rsp = mx.nd.sparse.row_sparse_array((grad[a:hi].as_in_context(self.store_ctx), rows), shape=shape,
                                                ctx=self.store_ctx)
            if momentum:
                mx.nd.sgd_mom_update(self.weight, rsp, self.momentum, out=self.weight, lazy_update=True, **kw)
            else:
                mx.nd.sgd_update(self.weight, rsp, out=self.weight, lazy_update=True, **kw)

    # ---------------------------------------------------------------- helpers
    def _gather_labels(self, b: int, d: int, dtype: str, y: np.ndarray) -> np.ndarray:
        """All ranks' labels (N,) as int64 class ids, in rank order.

        Each rank sends a header (B, D, number of labels, fused kernels or not, embedding
        dtype, the head's settings: C, margin, scale, filtering threshold; its first bad
        label) and its labels; every check runs on the gathered data, so a bad input on one
        rank raises ValueError on every rank instead of leaving the others waiting in a
        collective.
        """
        code = EMBEDDING_DTYPES.index(dtype) if dtype in EMBEDDING_DTYPES else len(EMBEDDING_DTYPES)
        ids, (problem, position, value) = _class_ids(y, self.num_classes)
        settings = [self.num_classes, *_float_bits([*self.margin, self.scale, self.threshold])]
        header = [b, d, len(ids), int(self.fused), code, *settings, problem, position, *_float_bits([value])]
        packed = dist.allgather(_host_array(np.concatenate([header, ids]), "int64", mx.cpu()), name="pfc_mx.pfc.labels")
        packed = packed.asnumpy()
        headers, parts, pos, k = [], [], 0, len(header)
        for _ in range(self.world):
            headers.append(tuple(int(v) for v in packed[pos:pos + k]))
            parts.append(packed[pos + k:pos + k + headers[-1][2]])
            pos += k + headers[-1][2]
        ranks = f"on ranks 0..{self.world - 1}"
        sizes, dims, counts, fused, dtypes = (list(col) for col in zip(*[h[:5] for h in headers]))
        if len(set(sizes)) != 1:
            raise ValueError(f"every rank must pass the same batch size, got {sizes} {ranks}")
        if set(dims) != {self.embedding_size}:
            raise ValueError(f"embeddings must be (B, {self.embedding_size}), got dimension {dims} per rank "
                             "(-1: not 2-D)")
        if counts != sizes:
            raise ValueError(f"got {counts} labels for {sizes} embeddings per rank")
        if sizes[0] == 0:
            raise ValueError("got an empty batch (0 embeddings on every rank); a step needs at least one sample")
        if len(set(dtypes)) != 1:  # the embeddings are exchanged as raw values of one dtype
            names = [EMBEDDING_DTYPES[c] if c < len(EMBEDDING_DTYPES) else "other" for c in dtypes]
            raise ValueError(f"every rank must pass embeddings of the same dtype, got {names} {ranks}")
        if len(set(fused)) != 1:  # the ranks would compute the loss in different ways
            raise ValueError(f"ranks disagree on the Partial FC kernels (fused: {[bool(f) for f in fused]} {ranks}); "
                             "set partial_fc.kernels (or PFC_MX_KERNELS) to 'stock' or make the fused kernels load "
                             "on every host")
        if len({h[5:5 + len(settings)] for h in headers}) != 1:  # shards and softmax would not fit together
            shown = [(h[5], *np.asarray(h[6:5 + len(settings)], np.int64).view(np.float64).tolist()) for h in headers]
            raise ValueError(f"ranks disagree on the Partial FC settings (num_classes, m1, m2, m3, scale, "
                             f"interclass threshold): {shown} {ranks}")
        for r, h in enumerate(headers):
            problem, position = h[-3], h[-2]
            if problem == 1:
                raise ValueError(f"labels must be class ids (integers), got labels that {LABEL_PROBLEMS[1]} on rank {r}")
            if problem:
                v = float(np.int64(h[-1]).view(np.float64))
                shown = int(v) if np.isfinite(v) and v == int(v) else v
                what = LABEL_PROBLEMS[problem].format(c=self.num_classes)
                raise ValueError(f"label {shown} (rank {r}, position {position}) {what}")
        return np.concatenate(parts)

    def _workspace(self, n: int, s: int) -> Dict[str, mx.nd.NDArray]:
        """Buffers of one step, reused while (N, S) stay the same (see the module docstring)."""
        key = (n, s)
        if self._ws.get("key") != key:
            if n * s > MAX_ARRAY_ELEMENTS and not _large_arrays():
                raise ValueError(f"the step's logits (N × S = {n:,} × {s:,} elements) are beyond the "
                                 f"{MAX_ARRAY_ELEMENTS:,} of one MXNet array in this build (without "
                                 "USE_INT64_TENSOR_SIZE); lower the sample rate or the global batch, or use more ranks")
            self._ws = {}  # free the old buffers before allocating new ones
            ctx = self.ctx
            ws = {"key": key, "rows": mx.nd.empty((s, self.embedding_size), ctx=ctx),
                  "wnorm": mx.nd.empty((s,), ctx=ctx), "logits": mx.nd.empty((n, s), ctx=ctx)}
            if not self.fused:  # the fused softmax overwrites the logits
                ws["probs"] = mx.nd.empty((n, s), ctx=ctx)
                if self.threshold > 0:
                    ws["keep"] = mx.nd.empty((n, s), ctx=ctx)
            self._ws = ws
        return self._ws

    def _used_rows(self, idx: Optional[mx.nd.NDArray], ws: Dict[str, mx.nd.NDArray]) -> mx.nd.NDArray:
        """weight[idx] on the training context (idx: int64 rows on the centers' context): the weight
        itself when every row (idx None) is used on-device, else a copy in ws["rows"]."""
        if idx is None:
            return self.weight if self.store_ctx == self.ctx else self.weight.copyto(ws["rows"])
        if self.store_ctx == self.ctx:
            return mx.nd.take(self.weight, idx, out=ws["rows"])
        return mx.nd.take(self.weight, idx).copyto(ws["rows"])

    def _start_local(self, plan: Any, n: int) -> Dict[str, Any]:
        """The step's state on this rank and what needs no embeddings: workspace, the used rows and their norms."""
        s = plan.num_rows
        if plan.index is not None:
            self.last_index = plan.index
        elif self.last_index is None or len(self.last_index) != self.num_local:
            self.last_index = np.arange(self.num_local, dtype=np.int64)
        self._last_grad = None
        out: Dict[str, Any] = {"s": s, "plan": plan}
        if s == 0:  # log-normaliser "−inf", target logit 0
            out["parts"] = _host_array(np.stack([np.full(n, LOWEST), np.zeros(n)]), "float32", self.ctx)
            return out
        out["ws"] = ws = self._workspace(n, s)
        if self.fused:
            return self._fused_start(plan, n, ws, out)
        out["index"] = None if plan.index is None else _host_array(plan.index, "int64", self.store_ctx)
        out["w"] = w = self._used_rows(out["index"], ws)
        fm.row_norms(w, out=ws["wnorm"])
        return out

    def _local_forward(self, local: Dict[str, Any], xn: mx.nd.NDArray, n: int) -> None:
        """Logits on this rank's used rows → softmax into the workspace; local log-normaliser and target logit
        (local["parts"])."""
        s, plan = local["s"], local["plan"]
        if s == 0:
            return
        if self.fused:
            self._fused_forward(local, xn, n)
            return
        ws, w, wnorm = local["ws"], local["w"], local["ws"]["wnorm"]
        logits = mx.nd.dot(xn * self.scale, w, transpose_b=True, out=ws["logits"])
        mx.nd.broadcast_div(logits, wnorm.reshape((1, s)), out=logits)  # s·cos
        rows = np.flatnonzero(plan.local_labels >= 0)
        if len(rows):
            local["rows"] = _host_array(rows, "int64", self.ctx)
            local["tindex"] = _host_array(np.stack([rows, plan.local_labels[rows]]), "int64", self.ctx)
            local["cos_t"] = mx.nd.gather_nd(logits, local["tindex"]) / self.scale
            f, df = target_logit_and_derivative(local["cos_t"], self.margin)
            local["logit_t"], local["dlogit_t"] = f * self.scale, df
        if self.threshold > 0:
            keep_mask(logits, self.threshold * self.scale, out=ws["keep"])
            mx.nd.elemwise_mul(logits, ws["keep"], out=logits)
        target = mx.nd.zeros((n,), ctx=self.ctx)
        if len(rows):
            fm.scatter(logits, local["tindex"], local["logit_t"])
            target = mx.nd.scatter_nd(local["logit_t"], local["rows"].reshape((1, -1)), shape=(n,))
        local["lse"] = fm.local_log_normalizer(logits, ws["probs"])
        local["parts"] = mx.nd.stack(local["lse"], target)

    def _local_backward(self, local: Dict[str, Any], lse: mx.nd.NDArray, xn: mx.nd.NDArray,
                        n: int) -> mx.nd.NDArray:
        """dL/d xn (N, D) of this rank's logits.

        local["center_grad"] then queues the center gradient (to last_grad and the
        pending update); the caller queues it after the collective on dxn.
        """
        plan, s = local["plan"], local["s"]
        if s == 0:
            self._pending = {"index": None, "grad": None}
            return mx.nd.zeros((n, self.embedding_size), ctx=self.ctx)
        if self.fused:
            return self._fused_backward(local, lse, xn, n)
        index, ws, w = local["index"], local["ws"], local["w"]
        logits, probs, wnorm = ws["logits"], ws["probs"], ws["wnorm"]
        # off the targets dL/dcos = g·P (P: local softmax, g: this rank's share of the row · s/N); the row
        # factor g goes into xn, into the product for dxn and into the sum for r, never over the (N, S) matrix
        g = mx.nd.exp(local["lse"] - lse) * (self.scale / n)
        if self.threshold > 0:
            mx.nd.elemwise_mul(probs, ws["keep"], out=probs)
        if "rows" in local:  # target entries are added exactly below
            fm.scatter(probs, local["tindex"], mx.nd.zeros_like(local["cos_t"]))
        mx.nd.broadcast_div(probs, wnorm.reshape((1, s)), out=probs)  # P / ν
        dxn = mx.nd.broadcast_mul(mx.nd.dot(probs, w), g.reshape((n, 1)))  # P·wn = (P / ν)·w
        mx.nd.elemwise_mul(logits, probs, out=logits)                 # s·cos · P / ν (0 at targets)
        r = mx.nd.dot((g / self.scale).reshape((1, n)), logits).reshape((s,))
        targets = None
        if "rows" in local:
            p_t = mx.nd.exp(local["logit_t"] - mx.nd.take(lse, local["rows"]))
            dcos_t = local["dlogit_t"] * (p_t - 1) * (self.scale / n)
            cols = plan.local_labels[plan.local_labels >= 0]
            dcos_t = dcos_t / mx.nd.take(wnorm, local["tindex"][1])
            dxn = dxn + fm.target_input_grad(dcos_t, w, local["rows"], cols, n)
            targets = fm.target_center_terms(dcos_t, xn, local["rows"], local["cos_t"], cols)

        def center_grad() -> None:
            probs_t = mx.nd.transpose(probs, out=logits.reshape((s, n)))  # logits are spent: P'ᵀ (S, N) there
            # the gradient overwrites the gathered rows (dead after this) or fills the buffer when w is the weight
            self._last_grad = fm.weight_grad_into(ws["rows"], w, wnorm, probs_t, xn * g.reshape((n, 1)), r, targets)
            self._pending = {"index": index, "grad": self._last_grad}

        local["center_grad"] = center_grad
        return dxn

    def _fused_start(self, plan: Any, n: int, ws: Dict[str, mx.nd.NDArray], out: Dict[str, Any]) -> Dict[str, Any]:
        """_start_local with the fused kernels: the used rows gathered already normalised, in one pass.

        Unlike the stock path the used centers are always copied, normalised, into
        ws["rows"] (at rate 1 the stock path reads the weight in place instead), so
        the (N, S) logits need no division.
        """
        if plan.index is not None:
            idx = _host_array(plan.index, "int64", self.ctx)
        else:  # every row, kept with the workspace
            idx = ws.get("all_rows")
            if idx is None:
                idx = ws["all_rows"] = mx.nd.arange(self.num_local, ctx=self.ctx, dtype="int64")
        out["index"] = idx
        mx.nd.pfc_gather_normalize(self.weight, idx, out=[ws["rows"], ws["wnorm"]])
        out["tcol"] = _host_array(plan.local_labels, "int64", self.ctx)  # -1: not in this shard
        out["parts"], out["stats"] = mx.nd.empty((2, n), ctx=self.ctx), mx.nd.empty((3, n), ctx=self.ctx)
        return out

    def _fused_forward(self, local: Dict[str, Any], xn: mx.nd.NDArray, n: int) -> None:
        """_local_forward with the fused kernels: margin, softmax and its sums in one pass, in place.

        The product expo·ŵ of the embedding gradient is queued here too: it needs
        only this rank's softmax, so it runs while the ranks gather their parts.
        """
        ws = local["ws"]
        logits = mx.nd.linalg.gemm2(xn, ws["rows"], transpose_b=True, alpha=self.scale, out=ws["logits"])  # s·cos
        m1, m2, m3 = self.margin
        expo = mx.nd.pfc_margin_softmax(logits, local["tcol"], m1=m1, m2=m2, m3=m3, scale=self.scale,
                                        filter=self.threshold > 0, threshold=self.threshold * self.scale,
                                        out=[logits, local["parts"], local["stats"]])[0]
        local["expo_rows"] = mx.nd.dot(expo, ws["rows"])

    def _fused_backward(self, local: Dict[str, Any], lse: mx.nd.NDArray, xn: mx.nd.NDArray,
                        n: int) -> mx.nd.NDArray:
        """_local_backward with the fused kernels: no pass over (N, S) after the softmax.

        Off the targets dL/dcos = g_i·expo (row factors g from the global lse), so
        dxn = g·(expo·ŵ) + the target entries, and the center product
        G = expoᵀ·(g·xn) goes to ws["rows"] (ŵ is spent by then); step() adds the
        target entries and the term through w / ν inside its pass over the rows.
        """
        ws = local["ws"]
        dxn, xs, tcoef = mx.nd.pfc_softmax_scale(local["expo_rows"], ws["rows"], xn, local["parts"], local["stats"],
                                                 lse, local["tcol"], scale=self.scale)

        def center_grad() -> None:
            grad = mx.nd.linalg.gemm2(ws["logits"], xs, transpose_a=True, out=ws["rows"])
            self._pending = {"index": local["index"], "grad": grad,
                             "fused": (ws["wnorm"], xn, local["tcol"], tcoef)}

        local["center_grad"] = center_grad
        return dxn
