"""PartialFC: this rank's shard of class centers, sampled margin softmax, sparse center updates.

    pfc = PartialFC(num_classes, 512, margin=(1.0, 0.5, 0.0), sample_rate=0.1, ctx=dist.context())
    with autograd.record():
        emb = backbone(images)                                 # (B, D) on this rank
    loss, grad = pfc.forward_backward(emb.detach(), labels)   # global mean loss, dL/d emb (B, D)
    emb.backward(grad); trainer.step(1); pfc.step(lr, momentum=0.9, wd=5e-4)

One step (docs/design.md, "One training step"): embeddings and labels are gathered
from every rank (N = W·B rows, every rank holds the same B); rank r owns classes
[class_start, class_start + num_local); a step uses every positive class of the
shard plus uniform negatives (sample_rate < 1), drawn per rank and per step from
(seed, rank, step); logits s·cos with the combined margin on the target entry
(pfc_mx.margin); the softmax is normalised over all ranks; the embedding
gradient is summed over ranks and each rank returns its own B rows. step()
applies MXNet's SGD momentum update (mom = momentum·mom − lr·(grad + wd·w);
w += mom) to the rows the last step used; every other row keeps weight and
momentum bit for bit.

Checkpoints by global class range (elastic resume on another world size):
pfc_mx.checkpoint writes `weight` and `momentum` (this shard's NDArrays, from
`class_start` on) in row blocks and reads a rank's own rows straight back into
them; get_shard() (NumPy copies) and set_rows(global_start, weight, momentum)
serve tests and tools; set_step(step) restores the sampling stream. Initial centers are
N(0, 0.01) per global class (pfc_mx.shard), the same for any world size.

kernels picks the implementation once: "fused" (pfc_mx.head.fused, the CPU
kernels), "stock" (pfc_mx.head.stock, stock MXNet operators), "auto" (fused on
the CPU when the kernels load, stock on GPUs; default PFC_MX_KERNELS, else auto)
or "original" (pfc_mx.head.original: insightface's MXNet operators in their order,
slower, for comparisons with the original code).
Every rank must use the same one. Memory per rank: weight + momentum (num_local
× D float32 each; centers_on="host" keeps them in host memory and moves only the
used rows) plus a workspace of S × D and N × S floats (docs/performance.md).
Embeddings may be float16 (every rank the same dtype); the softmax math is float32.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional, Sequence, Tuple, Union

import mxnet as mx
import numpy as np

from pfc_mx import dist
from pfc_mx import kernels as pfc_kernels
from pfc_mx.head import options
from pfc_mx.head.arrays import large_arrays, zeros
from pfc_mx.head.base import HeadMath, Update
from pfc_mx.head.fused import FusedHead
from pfc_mx.head.labels import Agreed, gather_labels
from pfc_mx.head.original import OriginalHead
from pfc_mx.head.stock import StockHead
from pfc_mx.margin import Margin, get_margin
from pfc_mx.shard import MAX_ARRAY_ELEMENTS, init_center_rows, min_world, plan_step, shard_range, step_rng

log = logging.getLogger(__name__)


class PartialFC:
    """The Partial FC head of one rank (see the module docstring)."""

    def __init__(self, num_classes: int, embedding_size: int, margin: Union[str, Sequence[float]] = (1.0, 0.5, 0.0),
                 scale: float = 64.0, sample_rate: float = 1.0, interclass_filtering_threshold: float = 0.0,
                 ctx: Optional[mx.Context] = None, seed: int = 0, centers_on: str = "device",
                 kernels: Optional[str] = None) -> None:
        if num_classes < 1 or embedding_size < 1:
            raise ValueError(f"need num_classes >= 1 and embedding_size >= 1, got {num_classes}, {embedding_size}")
        options.check("sample_rate", sample_rate)
        options.check("interclass_filtering_threshold", interclass_filtering_threshold)
        options.check("centers_on", centers_on)
        options.check("scale", scale)
        kernels = kernels if kernels is not None else os.environ.get(options.KERNELS_ENV, "auto")
        options.check("kernels", kernels, f"kernels (or {options.KERNELS_ENV})")
        self.num_classes, self.embedding_size = int(num_classes), int(embedding_size)
        margin = get_margin(margin)
        self.sample_rate, self.seed = float(sample_rate), int(seed)
        self.world, self.rank = dist.size(), dist.rank()
        self.ctx = ctx if ctx is not None else dist.context()
        self.store_ctx = mx.cpu() if centers_on == "host" else self.ctx
        head = OriginalHead if kernels == "original" else (
            FusedHead if _use_fused(kernels, self.ctx, self.store_ctx) else StockHead)
        self.class_start, self.num_local = shard_range(self.num_classes, self.world, self.rank)
        need = min_world(self.num_classes, self.embedding_size)  # the rule tools/plan.py applies too
        if self.world < need and not large_arrays():
            raise ValueError(f"{self.num_classes} classes of dimension {self.embedding_size} on {self.world} rank(s) "
                             f"make shards beyond the {MAX_ARRAY_ELEMENTS:,} elements of one MXNet array in this build "
                             f"(without USE_INT64_TENSOR_SIZE); use at least {need} ranks")
        self.weight = zeros((self.num_local, self.embedding_size), self.store_ctx)
        self.momentum = zeros((self.num_local, self.embedding_size), self.store_ctx)
        for lo, hi, rows in init_center_rows(self.class_start, self.num_local, self.embedding_size, self.seed):
            self.weight[lo:hi]._sync_copyfrom(rows)  # straight into the view: no temporary NDArray per block
        self._impl: HeadMath = head(self.weight, self.momentum, self.ctx, margin, float(scale),
                                    float(interclass_filtering_threshold))
        self.last_index: Optional[np.ndarray] = None   # (S,) local rows used by the last step
        self._update: Optional[Update] = None          # the last step's, until step()
        self._step = 0
        log.debug("rank %d: classes [%d, %d) of %d, D %d, sample rate %g, centers on %s", self.rank,
                  self.class_start, self.class_start + self.num_local, self.num_classes, self.embedding_size,
                  self.sample_rate, self.store_ctx)

    @property
    def fused(self) -> bool:
        """Whether this head runs the fused CPU kernels."""
        return self._impl.name == "fused"

    @property
    def kernels(self) -> str:
        """The implementation this head runs: 'fused', 'stock' or 'original' ('auto' resolved)."""
        return self._impl.name

    @property
    def margin(self) -> Margin:
        """(m1, m2, m3) of the combined margin; settable between steps."""
        return self._impl.margin

    @margin.setter
    def margin(self, value: Margin) -> None:
        self._impl.margin = value

    @property
    def scale(self) -> float:
        return self._impl.scale

    @property
    def threshold(self) -> float:
        """Inter-class filtering threshold on the cosines (0: off)."""
        return self._impl.threshold

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

    # --------------------------------------------------------------- one step
    def forward_backward(self, embeddings: mx.nd.NDArray, labels: Any) -> Tuple[float, mx.nd.NDArray]:
        """Global mean loss (same on every rank) and its gradient w.r.t. embeddings (B, D), same dtype.

        embeddings: this rank's (B, D) float32 or float16; labels: (B,) class ids in [0, C).
        Collective: every rank calls it with the same B. The collectives after the
        labels are queued, not waited for, so Python queues the whole step while
        the ranks exchange.
        """
        impl = self._impl
        b = embeddings.shape[0]
        d = embeddings.shape[1] if embeddings.ndim == 2 else -1
        y = labels.asnumpy() if isinstance(labels, mx.nd.NDArray) else np.asarray(labels)
        agreed = Agreed(self.num_classes, self.embedding_size, impl.name, impl.margin, impl.scale, impl.threshold)
        all_labels = gather_labels(y, b, d, str(np.dtype(embeddings.dtype)), agreed, self.world)
        n = self.world * b
        # queued, not waited for: the ranks exchange embeddings while this host plans the step
        x_all = dist.gather_rows(embeddings.as_in_context(self.ctx), name="pfc_mx.pfc.embeddings")
        rng = step_rng(self.seed, self.rank, self._step) if self.sample_rate < 1 else None
        plan = plan_step(all_labels, self.class_start, self.num_local, self.sample_rate, rng)
        self._step += 1
        if plan.index is not None:
            self.last_index = plan.index
        elif self.last_index is None or len(self.last_index) != self.num_local:
            self.last_index = np.arange(self.num_local, dtype=np.int64)
        step = impl.start(plan, n)
        # queued after the planning: a multi-threaded operator running beside this busy thread waits for it
        xn, xnorm = impl.inputs(x_all if x_all.dtype == np.float32 else x_all.astype("float32"))
        parts = impl.forward(step, xn)
        # one collective for the softmax sums: every rank's (log-normaliser, target logit) rows
        parts = dist.gather_rows(parts.reshape((1,) + parts.shape), name="pfc_mx.pfc.softmax_parts")
        lse, loss = impl.loss(parts)
        dxn = dist.allreduce(impl.backward(step, lse, xn), op="sum", name="pfc_mx.pfc.embedding_grad", inplace=True)
        # queued after the all-reduce: the product runs while the ranks exchange dxn
        self._update = impl.center_grad(step)
        rows = slice(self.rank * b, (self.rank + 1) * b)
        grad = impl.input_grad(dxn, xn, xnorm, rows)
        # read the loss last: the backward is queued by then and runs while Python waits
        return float(loss.asscalar()), grad.astype(embeddings.dtype, copy=False)

    def step(self, lr: float, momentum: float = 0.9, wd: float = 5e-4) -> None:
        """SGD (MXNet semantics) on the rows used by the last forward_backward; other rows untouched."""
        if self._update is None:
            raise RuntimeError("PartialFC.step() needs a forward_backward() first")
        update, self._update = self._update, None
        self._impl.update(update, lr, momentum, wd)


def _use_fused(kernels: str, ctx: mx.Context, store_ctx: mx.Context) -> bool:
    """Fused CPU kernels (pfc_mx.kernels) when asked or available; stock operators on GPUs."""
    if kernels == "stock" or (ctx.device_type != "cpu" and kernels == "auto"):
        return False
    if ctx.device_type != "cpu" or store_ctx.device_type != "cpu":
        raise ValueError("kernels='fused' needs CPU contexts; the fused kernels have no GPU version")
    if pfc_kernels.load():
        return True
    if kernels == "fused":
        raise RuntimeError(f"kernels='fused' but they cannot be loaded: {pfc_kernels.unavailable_reason()}")
    return False
