"""Cases that run inside each rank launched by tests/ranks.py.

A case is a function ``f(outdir: Path, **kwargs) -> dict[str, np.ndarray]``
registered with ``@case``; the runner (``python -m tests.dist_cases CASE OUTDIR
[JSON_KWARGS]``) calls ``dist.init()``, runs it and saves the result as
``OUTDIR/rank{r}.npz``. Every module of this package is imported, so a new
file of cases needs no registration elsewhere.
"""
from __future__ import annotations

from typing import Callable, Dict

import numpy as np

CASES: Dict[str, Callable[..., Dict[str, np.ndarray]]] = {}


def case(fn: Callable[..., Dict[str, np.ndarray]]) -> Callable[..., Dict[str, np.ndarray]]:
    """Register fn under its own name."""
    CASES[fn.__name__] = fn
    return fn
