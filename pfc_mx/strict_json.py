"""Strict JSON for what runs write (summary line, metrics.jsonl, state.json): NaN and ±inf become null."""
from __future__ import annotations

import json
import math
from typing import Any, Optional


def finite_or_none(x: Optional[float]) -> Optional[float]:
    """x as a float, or None when it is missing or not finite (a loss before the first good step)."""
    return float(x) if x is not None and math.isfinite(x) else None


def strict(obj: Any) -> Any:
    """obj with every non-finite float (nested in dicts, lists, tuples) replaced by None."""
    if isinstance(obj, float):
        return finite_or_none(obj)
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """json.dumps of strict(obj); a non-finite number can no longer reach the text."""
    return json.dumps(strict(obj), allow_nan=False, **kwargs)
