"""The command-line tools: one module each (rec, export_onnx, eval_verification, eval_ijb, model_info,
plan), and here what every tool shares.

    python tools/rec.py validate data/      # in a checkout
    pfc-rec validate data/                  # the same, installed (pfc_mx.cli.console)

Both run the module's main(argv) through run_cli: a user error (PfcError) becomes one line
`error: <message>` on stderr and exit code 2, and so does a usage error (ArgumentParser).
"""
from __future__ import annotations

import argparse
import logging
import math
import sys
from typing import Any, Callable, List, Optional, Sequence

from pfc_mx.errors import ConfigError, PfcError


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one-line ConfigErrors (exit 2 through run_cli)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{message} (see {self.prog} --help)")


def number(kind: type, low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False,
            what: str = "") -> Callable[[str], "int | float"]:
    """An argparse type: a finite `kind` in the range given (what: the range in words)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        ok = math.isfinite(value) and (value > low if low_open else value >= low) and \
            (value < high if high_open else value <= high)
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    return parse


def int_at_least(low: int) -> Callable[[str], int]:
    """argparse type: an integer >= low."""
    return number(int, low, what=f">= {low}")  # type: ignore[return-value]


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)
fraction = number(float, 0.0, 1.0, what="in [0, 1]")  # a share of something, 0 and 1 included


def comma_list(item: Callable[[str], Any]) -> Callable[[str], List[Any]]:
    """argparse type: comma-separated values, each parsed by the argparse type `item`; at least one."""
    def parse(text: str) -> List[Any]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated values, got {text!r}")
        return [item(v) for v in values]  # an item's ArgumentTypeError names the bad value
    return parse


def one_of(values: Sequence[str]) -> Callable[[str], str]:
    """argparse type: one of values."""
    def parse(text: str) -> str:
        if text not in values:
            raise argparse.ArgumentTypeError(f"must be among {', '.join(values)}, got {text!r}")
        return text
    return parse


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
