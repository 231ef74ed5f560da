"""What the studies of tools/study.py share: progress lines on stderr and markdown tables."""
from __future__ import annotations

import re
import sys
import time
from typing import Any, Sequence


class Progress:
    """'[k/n] what: result (elapsed, ETA)' lines on stderr."""

    def __init__(self, total: int, study: str) -> None:
        self.total, self.study, self.done, self.t0 = total, study, 0, time.time()

    def start(self, what: str) -> None:
        print(f"[{self.done}/{self.total}] {self.study}: running {what}", file=sys.stderr, flush=True)

    def finish(self, what: str, result: str) -> None:
        self.done += 1
        elapsed = time.time() - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        print(f"[{self.done}/{self.total}] {self.study}: {what}: {result} (elapsed {clock(elapsed)}, "
              f"ETA {clock(eta)})", file=sys.stderr, flush=True)


def clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table; cells are str()-ed, numbers right-aligned."""
    blank = ("–", "does not fit")  # a missing number does not make a column text
    numeric = [bool(rows) and all(re.fullmatch(r"[-+0-9.,×% ±]*", str(r[i])) or str(r[i]) in blank for r in rows)
               and not all(str(r[i]) in blank for r in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
