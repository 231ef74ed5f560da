"""Launch real Horovod ranks for a test and collect what each rank produced.

``run_ranks("collectives", tmp_path)`` runs
``horovodrun -np 2 -H localhost:2 --gloo <python> -m tests.dist_cases collectives DIR``
from the repository root, waits at most ``timeout`` seconds (a hung collective
fails the test instead of hanging CI; the whole process group is killed) and
returns one dict of arrays per rank, in rank order. A non-zero exit raises
with the ranks' output.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HOROVODRUN = Path(sys.executable).parent / "horovodrun"


class RanksFailed(AssertionError):
    """The launched ranks exited non-zero or ran past their timeout."""


def launch(args: List[str], np_: int = 2, timeout: float = 300, cwd: Path = ROOT,
           env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """Run `horovodrun -np np_ ... <args>` and return the finished process (output captured).

    Raises RanksFailed with the tail of the ranks' output on a non-zero exit or a timeout.
    """
    cmd = [str(HOROVODRUN), "-np", str(np_), "-H", f"localhost:{np_}", "--gloo", *args]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
                "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                **(env or {})}
    proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise RanksFailed(f"ranks still running after {timeout:.0f} s (hung collective?): "
                          f"{' '.join(cmd)}\n--- output ---\n{out[-6000:]}") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode != 0:
        raise RanksFailed(f"ranks exited {proc.returncode}: {' '.join(cmd)}\n--- output ---\n{out[-6000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def run_ranks(case: str, outdir: Path, np_: int = 2, timeout: float = 300,
              **kwargs: Any) -> List[Dict[str, np.ndarray]]:
    """Run a case of tests.dist_cases on np_ ranks; return each rank's saved arrays in rank order."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "tests.dist_cases", case, str(outdir)]
    if kwargs:
        args.append(json.dumps(kwargs))
    proc = launch(args, np_=np_, timeout=timeout)
    results = []
    for r in range(np_):
        path = outdir / f"rank{r}.npz"
        if not path.exists():
            raise RanksFailed(f"rank {r} wrote no result {path.name}\n--- output ---\n{proc.stdout[-6000:]}")
        with np.load(path) as z:
            results.append({k: z[k] for k in z.files})
    return results
