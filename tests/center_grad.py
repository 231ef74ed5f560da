"""dL/d weight[last_index] of a head's last forward_backward, for tests (the library never forms it whole).

The stock head's pending update holds the (S, D) gradient itself; the fused head's
holds only its product part, and its update kernel adds the target entries and the
term through w / ν inside its pass. This assembles the same gradient in float64.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from pfc_mx.head import PartialFC
from pfc_mx.head.fused import FusedUpdate


def center_grad(pfc: PartialFC) -> Optional[np.ndarray]:
    """(S, D) float32 gradient of the last step's used centers; None before a step, after step() or when S = 0."""
    update = pfc._update  # what step() will apply
    if update is None or update.grad is None:
        return None
    if not isinstance(update, FusedUpdate):
        return update.grad.asnumpy()
    g = update.grad.asnumpy().astype(np.float64)
    wnorm, xn, tcol, tcoef = (a.asnumpy() for a in (update.wnorm, update.xn, update.tcol, update.tcoef))
    rows = np.flatnonzero(tcol >= 0)
    np.add.at(g, tcol[rows], tcoef[rows, None].astype(np.float64) * xn[rows])
    w = pfc.weight.asnumpy()[update.index.asnumpy()].astype(np.float64)
    nu = wnorm.astype(np.float64)[:, None]
    return (g / nu - w * (w * g).sum(1, keepdims=True) / nu ** 3).astype(np.float32)
