"""Data: RecordIO datasets, rank-sharded sampling, the parallel loader, `.bin` sets, synthetic faces.

The names below load on first use: importing pfc_mx.data.options (the config does) must not
load OpenCV.
"""
import importlib
from typing import Any

_HOMES = {"RecordDataset": "recordio", "RecordLoader": "loader", "ShardedSampler": "sampler",
          "load_bin": "verification_bin", "write_bin": "verification_bin"}
__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"pfc_mx.data.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
