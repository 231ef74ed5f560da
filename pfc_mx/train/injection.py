"""Faults injected on purpose (test hooks read from the environment), handed to a run as one object.

PFC_MX_INJECT_NONFINITE="3,5:grad": at step 3 the last rank multiplies its embeddings by NaN
("loss", the default kind), at step 5 its embedding gradient ("grad"); the collectives carry
the fault to every rank, as a real one would. PFC_MX_INJECT_STOP=<n>: the run stops at the
boundary after n steps exactly as a stop signal would there (a checkpoint, then exit 75).
Step numbers count from 1.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional

from pfc_mx.errors import ConfigError

INJECT_NONFINITE = "PFC_MX_INJECT_NONFINITE"
INJECT_STOP = "PFC_MX_INJECT_STOP"


def parse_nonfinite(spec: str) -> Dict[int, str]:
    """'3, 5:grad' → {3: 'loss', 5: 'grad'}; ConfigError for anything else."""
    steps: Dict[int, str] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        step, _, kind = item.partition(":")
        if kind not in ("", "loss", "grad") or not step.isdigit():
            raise ConfigError(f"{INJECT_NONFINITE}={spec!r}: expected steps like 3,5:grad")
        steps[int(step)] = kind or "loss"
    return steps


@dataclass(frozen=True)
class Injection:
    """nonfinite: {step: 'loss' | 'grad'}; stop_at: the step after which to stop (0: never)."""

    nonfinite: Dict[int, str] = field(default_factory=dict)
    stop_at: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "Injection":
        stop = env.get(INJECT_STOP, "").strip()
        if stop and not stop.isdigit():
            raise ConfigError(f"{INJECT_STOP}={stop!r}: expected a step number")
        return cls(parse_nonfinite(env.get(INJECT_NONFINITE, "")), int(stop or 0))

    def nonfinite_at(self, step: int, last_rank: bool) -> Optional[str]:
        """What step `step` (1-based) poisons on this rank: 'loss', 'grad' or None."""
        return self.nonfinite.get(step) if last_rank else None

    def stop_after(self, done: int) -> Optional[str]:
        """The stop 'signal' at the boundary after `done` steps, or None."""
        return f"{INJECT_STOP}={self.stop_at}" if self.stop_at == done > 0 else None
