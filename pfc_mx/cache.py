"""The one folder pfc_mx keeps computed things in (compiled kernels, parsed indexes, labels).

    cache_root() / "kernels"      # pfc_mx.kernels
    cache_root() / "labels"       # pfc_mx.data.label_cache
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$PFC_MX_CACHE, else $XDG_CACHE_HOME/pfc_mx, else ~/.cache/pfc_mx."""
    root = os.environ.get("PFC_MX_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pfc_mx"
    return Path(root)
