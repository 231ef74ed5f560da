"""The head's options and the rule each value must follow: one source for PartialFC and the config.

    check("sample_rate", 0)             # ValueError: sample_rate must be in (0, 1], got 0
    RULES["kernels"]                    # (predicate, "'auto', 'fused', 'stock' or 'original'"): pfc_mx.config uses it

No MXNet here: the config imports this module without loading MXNet.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

KERNELS = ("auto", "fused", "stock", "original")  # auto: fused on the CPU, stock on GPUs (pfc_mx.head.partial_fc)
IMPLEMENTATIONS = ("stock", "fused", "original")  # what auto resolves among; the index is their wire code
CENTERS_ON = ("device", "host")       # where weight and momentum live: the training context or host memory
KERNELS_ENV = "PFC_MX_KERNELS"        # the default of `kernels` when the caller gives none


def one_of(values: Sequence[str]) -> str:
    """'a', 'b' or 'c'."""
    quoted = [repr(v) for v in values]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


# option -> (predicate, what a value must be)
RULES: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    "sample_rate": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "interclass_filtering_threshold": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "centers_on": (lambda v: v in CENTERS_ON, one_of(CENTERS_ON)),
    "scale": (lambda v: v > 0, "> 0"),
    "kernels": (lambda v: v in KERNELS, one_of(KERNELS)),
}


def check(option: str, value: Any, name: Optional[str] = None) -> None:
    """Raise ValueError("<name> must be <rule>, got <value>") when value breaks the option's rule."""
    ok, rule = RULES[option]
    if not ok(value):
        shown = repr(value) if isinstance(value, str) else value
        raise ValueError(f"{name or option} must be {rule}, got {shown}")
