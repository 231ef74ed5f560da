"""Entry point of one rank: python -m tests.dist_cases CASE OUTDIR [JSON_KWARGS]."""
from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from pathlib import Path

import numpy as np

from pfc_mx import dist
from tests import dist_cases


def main(argv: list) -> int:
    name, outdir = argv[0], Path(argv[1])
    kwargs = json.loads(argv[2]) if len(argv) > 2 else {}
    for mod in pkgutil.iter_modules(dist_cases.__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{dist_cases.__name__}.{mod.name}")
    if name not in dist_cases.CASES:
        print(f"unknown case {name!r}; known: {sorted(dist_cases.CASES)}", file=sys.stderr)
        return 2
    dist.init()
    result = dist_cases.CASES[name](outdir, **kwargs)
    result = {k: np.asarray(v) for k, v in (result or {}).items()}
    result["_rank"] = np.array(dist.rank())
    result["_size"] = np.array(dist.size())
    tmp = outdir / f".rank{dist.rank()}.npz"
    np.savez(tmp, **result)
    tmp.rename(outdir / f"rank{dist.rank()}.npz")
    dist.barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
