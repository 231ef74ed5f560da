"""Console scripts of the installed package (pyproject.toml [project.scripts]): pfc-rec runs
pfc_mx.cli.rec, like `python tools/rec.py` in a checkout, through run_cli."""
from __future__ import annotations

import importlib
from typing import Callable

from pfc_mx.cli import run_cli


def _console(tool: str) -> Callable[[], int]:
    """A console-script entry for pfc_mx.cli.<tool>, imported when the script runs."""
    def entry() -> int:
        return run_cli(importlib.import_module(f"pfc_mx.cli.{tool}").main)
    return entry


rec = _console("rec")
export_onnx = _console("export_onnx")
eval_verification = _console("eval_verification")
eval_ijb = _console("eval_ijb")
model_info = _console("model_info")
plan = _console("plan")
