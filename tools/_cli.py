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
