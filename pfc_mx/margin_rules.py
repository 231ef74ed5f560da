"""The combined margin's presets and bounds: one source for pfc_mx.margin and the config, without MXNet.

    get_margin("arcface")               # (1.0, 0.5, 0.0)
    margin_problem([1.0, 4.0, 0.0])     # "need m1 > 0, 0 <= m2 < pi, 0 <= m3 < 1" (None: accepted)

A margin (m1, m2, m3) turns a target cosine cos θ into cos(m1·θ + m2) − m3 (pfc_mx.margin does
the arithmetic). ArcFace is (1, 0.5, 0), CosFace (1, 0, 0.4). Bounds: m1 > 0 (finite),
0 <= m2 < π, 0 <= m3 < 1.

* m2 < π: at θ = 0 the angle m1·θ + m2 is m2; from π on no angle takes the cosine branch and
  the "margin" is the fallback's constant shift.
* m3 < 1: the best target logit, at θ = 0, is cos(m2) − m3 <= 1 − m3. With m3 >= 1 it is
  never positive, so never above a class orthogonal to the embedding (cos 0), as most of many
  classes in D dimensions nearly are: the margin could not be met, only the loss inflated.
* m1 finite: m1·θ must be an angle.

pfc_mx.config imports this module (loading a config must not load MXNet: tools/plan.py).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple, Union

Margin = Tuple[float, float, float]

ARCFACE: Margin = (1.0, 0.5, 0.0)
COSFACE: Margin = (1.0, 0.0, 0.4)
PRESETS: Dict[str, Margin] = {"arcface": ARCFACE, "cosface": COSFACE}
M2_LIMIT = math.pi  # m2 < M2_LIMIT
M3_LIMIT = 1.0      # m3 < M3_LIMIT
BOUNDS = "m1 > 0, 0 <= m2 < pi, 0 <= m3 < 1"


def margin_problem(spec: Union[str, Sequence[float]]) -> Optional[str]:
    """Why spec is not a margin get_margin accepts, in a few words; None when it is one."""
    if isinstance(spec, str):
        if spec.lower() in PRESETS:
            return None
        return f"use one of {sorted(PRESETS)} or a list [m1, m2, m3]"
    try:
        m1, m2, m3 = (float(v) for v in spec)
    except (TypeError, ValueError):
        return "need three numbers [m1, m2, m3]"
    if not (0 < m1 < math.inf and 0 <= m2 < M2_LIMIT and 0 <= m3 < M3_LIMIT):
        return f"need {BOUNDS}"
    return None


def get_margin(spec: Union[str, Sequence[float]]) -> Margin:
    """(m1, m2, m3) from a preset name ('arcface', 'cosface', any case) or three numbers within BOUNDS.

    ValueError naming spec and the rule it breaks otherwise.
    """
    problem = margin_problem(spec)
    if problem:
        raise ValueError(f"margin {spec!r}: {problem}")
    if isinstance(spec, str):
        return PRESETS[spec.lower()]
    return tuple(float(v) for v in spec)  # type: ignore[return-value]
