"""Shared entry wrapper of the command-line tools: user errors become one line and exit code 2."""
from __future__ import annotations

import logging
import sys
from typing import Callable, List, Optional

from pfc_mx.errors import PfcError


def run_cli(main: Callable[[Optional[List[str]]], int], argv: Optional[List[str]] = None) -> int:
    """Call main(argv); print a PfcError as `error: <message>` on stderr and return 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return int(main(argv) or 0)
    except PfcError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _console(tool: str) -> Callable[[], int]:
    """A console-script entry for tools/<tool>.py that goes through run_cli."""
    def entry() -> int:
        import importlib
        return run_cli(importlib.import_module(f"tools.{tool}").main)
    return entry


# console scripts (pyproject.toml [project.scripts])
rec = _console("rec")
export_onnx = _console("export_onnx")
eval_verification = _console("eval_verification")
eval_ijb = _console("eval_ijb")
model_info = _console("model_info")
plan = _console("plan")
