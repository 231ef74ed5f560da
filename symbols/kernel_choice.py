"""Which kernels a backbone operator's graphs get: set in code, else $PFC_MX_KERNELS, else 'auto'.

    choice = KernelChoice("PReLU")
    choice.set("stock")        # what tests and tools/bench_backbone.py do; None: back to the default
    choice.get()               # -> 'stock'; with nothing set: $PFC_MX_KERNELS, else 'auto'

symbols.prelu and symbols.batchnorm keep one each (their set_kernels / kernels); what 'auto'
means is theirs to say. 'original' (the head's replay of insightface's code, pfc_mx.head.original)
is 'stock' here: the original's backbone runs MXNet's own operators.
"""
from __future__ import annotations

import os
from typing import Optional

from pfc_mx.head.options import KERNELS, KERNELS_ENV, one_of


def checked(what: str, kernels: str) -> str:
    """kernels as an operator's choice ('original' → 'stock'); ValueError naming `what` when not one of KERNELS."""
    if kernels not in KERNELS:
        raise ValueError(f"{what} must be {one_of(KERNELS)}, got {kernels!r}")
    return "stock" if kernels == "original" else kernels


class KernelChoice:
    """The kernels ('auto', 'fused' or 'stock'; 'original' is stock) chosen for one operator; `what` names it
    in errors."""

    def __init__(self, what: str):
        self.what = what
        self._value: Optional[str] = None

    def set(self, kernels: Optional[str]) -> None:
        """'auto', 'fused', 'stock' ('original': stock), or None (back to $PFC_MX_KERNELS, else 'auto')."""
        self._value = None if kernels is None else checked(f"{self.what} kernels", kernels)

    def get(self) -> str:
        """The kernels in force: set's, else $PFC_MX_KERNELS, else 'auto'."""
        return self._value or checked(KERNELS_ENV, os.environ.get(KERNELS_ENV, "auto"))
