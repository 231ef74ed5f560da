"""Which kernels a backbone operator's graphs get: set in code, else $PFC_MX_KERNELS, else 'auto'.

    choice = KernelChoice("PReLU")
    choice.set("stock")        # what tests and tools/bench_backbone.py do; None: back to the default
    choice.get()               # -> 'stock'; with nothing set: $PFC_MX_KERNELS, else 'auto'

symbols.prelu and symbols.batchnorm keep one each (their set_kernels / kernels); what 'auto'
means is theirs to say.
"""
from __future__ import annotations

import os
from typing import Optional

from pfc_mx.head.options import KERNELS, KERNELS_ENV, one_of


class KernelChoice:
    """The kernels ('auto', 'fused' or 'stock') chosen for one operator; `what` names it in errors."""

    def __init__(self, what: str):
        self.what = what
        self._value: Optional[str] = None

    def set(self, kernels: Optional[str]) -> None:
        """'auto', 'fused', 'stock', or None (back to $PFC_MX_KERNELS, else 'auto')."""
        if kernels is not None and kernels not in KERNELS:
            raise ValueError(f"{self.what} kernels must be {one_of(KERNELS)}, got {kernels!r}")
        self._value = kernels

    def get(self) -> str:
        """The kernels in force: set's, else $PFC_MX_KERNELS, else 'auto'."""
        value = self._value or os.environ.get(KERNELS_ENV, "auto")
        if value not in KERNELS:
            raise ValueError(f"{KERNELS_ENV} must be {one_of(KERNELS)}, got {value!r}")
        return value
