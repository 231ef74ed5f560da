"""What the heads share: this rank's centers, the step's buffers, the phases of a step.

One step on this rank, between PartialFC's collectives (N = W·B rows of every rank,
S rows of this shard used by the step, D the embedding size; float32 unless said):

    step = impl.start(plan, n)              # used rows and their norms ν: needs no embeddings
    xn, xnorm = impl.inputs(x)              # (N, D) unit rows and (N,) norms of every rank's embeddings
    parts = impl.forward(step, xn)          # (2, N) this rank's log-normaliser and target logit per row
    lse, loss = impl.loss(parts_all)        # (W, 2, N) of every rank → (N,) log-normaliser, () mean loss
    dxn = impl.backward(step, lse, xn)      # (N, D) this rank's share of dL/d xn (xn = x / ‖x‖)
    update = impl.center_grad(step)         # (S, D) center gradient, queued after the all-reduce of dxn
    dx = impl.input_grad(dxn, xn, xnorm, rows)  # dL/dx through x / ‖x‖ for this rank's rows
    impl.update(update, lr, momentum, wd)   # step(): SGD momentum on the used rows only

(pfc_mx.head.original replaces the parts by three rows and xn by the raw embeddings:
its docstring.) A step that uses no row of this shard (S = 0, when C < W) is handled
here: its parts are EMPTY_PARTS (log-normaliser "−inf", target logit 0), and it leaves
the centers alone.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import mxnet as mx
import numpy as np

from pfc_mx import fc_math as fm
from pfc_mx.head.arrays import host_array, large_arrays
from pfc_mx.margin import Margin
from pfc_mx.shard import MAX_ARRAY_ELEMENTS, StepPlan

LOWEST = float(np.finfo(np.float32).min)  # log-normaliser of a rank without columns


@dataclass
class Workspace:
    """Buffers of one step on the training context, reused while (N, S) stay the same."""
    n: int
    s: int
    rows: mx.nd.NDArray                      # (S, D) the used centers, later their gradient
    wnorm: mx.nd.NDArray                     # (S,) their norms ν
    logits: mx.nd.NDArray                    # (N, S)
    probs: Optional[mx.nd.NDArray] = None    # (N, S) stock: the softmax, later the logits' gradient
    keep: Optional[mx.nd.NDArray] = None     # (N, S) stock with filtering: 1 where a logit is kept
    all_rows: Optional[mx.nd.NDArray] = None  # (num_local,) int64 0..num_local−1, fused when every row is used


@dataclass
class Step:
    """One step's state on this rank from start() to center_grad(); ws None: no row used (S = 0)."""
    plan: StepPlan
    n: int
    ws: Optional[Workspace] = None
    parts: Optional[mx.nd.NDArray] = None    # (2, N) local log-normaliser and target logit, for the exchange
    index: Optional[mx.nd.NDArray] = None    # (S,) int64 used rows of the shard; None (stock): every row


@dataclass
class Update:
    """What update() needs of the last step; grad None: no row was used."""
    index: Optional[mx.nd.NDArray]           # (S,) int64 used rows; None: every row
    grad: Optional[mx.nd.NDArray]            # (S, D) dL/d weight[index] (fused: only its product part)


class HeadMath(ABC):
    """The math of one rank's shard; subclasses implement the phases (see the module docstring).

    weight, momentum: (num_local, D) float32 on the centers' context (updated in place);
    ctx: the training context of the step's buffers.
    """

    name = ""                     # the value of `kernels` that picks this implementation
    EMPTY_PARTS: Tuple[float, ...] = (LOWEST, 0.0)  # a row's parts on a rank without used rows

    def __init__(self, weight: mx.nd.NDArray, momentum: mx.nd.NDArray, ctx: mx.Context, margin: Margin,
                 scale: float, threshold: float) -> None:
        self.weight, self.momentum = weight, momentum
        self.num_local, self.embedding_size = weight.shape
        self.ctx, self.store_ctx = ctx, weight.context
        self.margin, self.scale, self.threshold = margin, scale, threshold
        self._ws: Optional[Workspace] = None

    # ------------------------------------------------------------ the phases
    def start(self, plan: StepPlan, n: int) -> Step:
        """The step's state and what needs no embeddings (see _start)."""
        if plan.num_rows == 0:
            parts = host_array(np.repeat(np.array(self.EMPTY_PARTS)[:, None], n, axis=1), "float32", self.ctx)
            return Step(plan, n, parts=parts)
        return self._start(plan, n, self._workspace(n, plan.num_rows))

    def inputs(self, x: mx.nd.NDArray) -> Tuple[mx.nd.NDArray, Optional[mx.nd.NDArray]]:
        """(xn, xnorm): every rank's embeddings x (N, D) float32 as unit rows and their norms (N,)."""
        return fm.normalize_rows(x)

    def forward(self, step: Step, xn: mx.nd.NDArray) -> mx.nd.NDArray:
        """(2, N) this rank's log-normaliser and target logit of each row (xn: (N, D) unit rows)."""
        if step.ws is not None:
            self._forward(step, xn)
        return step.parts

    def backward(self, step: Step, lse: mx.nd.NDArray, xn: mx.nd.NDArray) -> mx.nd.NDArray:
        """(N, D) dL/d xn of this rank's logits, lse: (N,) the global log-normaliser."""
        if step.ws is None:
            return mx.nd.zeros((step.n, self.embedding_size), ctx=self.ctx)
        return self._backward(step, lse, xn)

    def center_grad(self, step: Step) -> Update:
        """The center gradient of the step, queued (the caller queues it after the all-reduce of dxn)."""
        return Update(None, None) if step.ws is None else self._center_grad(step)

    def update(self, update: Update, lr: float, momentum: float, wd: float) -> None:
        """SGD (MXNet's sgd_mom_update semantics) on the rows of update.index; every other row untouched."""
        if update.grad is not None:
            self._update(update, lr, momentum, wd)

    @abstractmethod
    def loss(self, parts: mx.nd.NDArray) -> Tuple[mx.nd.NDArray, mx.nd.NDArray]:
        """(N,) global log-normaliser and () mean loss from every rank's parts (W, 2, N)."""

    @abstractmethod
    def input_grad(self, dxn: mx.nd.NDArray, xn: mx.nd.NDArray, xnorm: Optional[mx.nd.NDArray],
                   rows: slice) -> mx.nd.NDArray:
        """(B, D) dL/dx of this rank's rows (a slice of N) from dL/d xn through xn = x / xnorm."""

    # ------------------------------------- the phases when the step uses rows (S > 0)
    @abstractmethod
    def _start(self, plan: StepPlan, n: int, ws: Workspace) -> Step:
        """The used rows into ws and their norms, S > 0."""

    @abstractmethod
    def _forward(self, step: Step, xn: mx.nd.NDArray) -> None:
        """Logits on the used rows → margin softmax; step.parts."""

    @abstractmethod
    def _backward(self, step: Step, lse: mx.nd.NDArray, xn: mx.nd.NDArray) -> mx.nd.NDArray:
        """dL/d xn (N, D); what the center gradient needs stays in step."""

    @abstractmethod
    def _center_grad(self, step: Step) -> Update:
        """Queue the (S, D) center product into step.ws.rows."""

    @abstractmethod
    def _update(self, update: Update, lr: float, momentum: float, wd: float) -> None:
        """The SGD update of the used rows, S > 0."""

    # ---------------------------------------------------------------- buffers
    def _workspace(self, n: int, s: int) -> Workspace:
        """Buffers of one step, reused while (N, S) stay the same."""
        if self._ws is None or (self._ws.n, self._ws.s) != (n, s):
            if n * s > MAX_ARRAY_ELEMENTS and not large_arrays():
                raise ValueError(f"the step's logits (N × S = {n:,} × {s:,} elements) are beyond the "
                                 f"{MAX_ARRAY_ELEMENTS:,} of one MXNet array in this build (without "
                                 "USE_INT64_TENSOR_SIZE); lower the sample rate or the global batch, or use more ranks")
            self._ws = None  # free the old buffers before allocating new ones
            ctx = self.ctx
            self._ws = Workspace(n, s, rows=mx.nd.empty((s, self.embedding_size), ctx=ctx),
                                 wnorm=mx.nd.empty((s,), ctx=ctx), logits=mx.nd.empty((n, s), ctx=ctx),
                                 **self._more_buffers(n, s))
        return self._ws

    def _more_buffers(self, n: int, s: int) -> Dict[str, mx.nd.NDArray]:
        """Workspace fields this implementation needs besides rows, wnorm and logits."""
        return {}
