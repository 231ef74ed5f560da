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
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# train_horovod.py on the demo recipe, for `launch` or a single process; tests add `--set ...`
TRAIN = [sys.executable, str(ROOT / "train_horovod.py"), str(ROOT / "configs" / "demo.yaml")]


def synthetic(tmp_path_factory: Any, **options: Any) -> Path:
    """A module's small synthetic dataset (pfc_mx.data.synthetic.generate, seed 0 unless given)."""
    from pfc_mx.data.synthetic import generate
    root = tmp_path_factory.mktemp("synthetic")
    generate(root, **{"seed": 0, **options})
    return root
HOROVODRUN = Path(sys.executable).parent / "horovodrun"


class RanksFailed(AssertionError):
    """The launched ranks exited non-zero or ran past their timeout."""


def horovodrun_command(args: List[str], np_: int = 2) -> List[str]:
    return [str(HOROVODRUN), "-np", str(np_), "-H", f"localhost:{np_}", "--gloo", *args]


def rank_env(env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment of launched ranks: unbuffered, one OpenMP thread, the repository importable."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **(env or {})}


def launch(args: List[str], np_: int = 2, timeout: float = 300, cwd: Path = ROOT,
           env: Optional[Dict[str, str]] = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run `horovodrun -np np_ ... <args>` and return the finished process (output captured).

    Raises RanksFailed with the tail of the ranks' output on a timeout, and on a non-zero exit
    when check.
    """
    cmd = horovodrun_command(args, np_)
    proc = subprocess.Popen(cmd, cwd=cwd, env=rank_env(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
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
    if check and proc.returncode != 0:
        raise RanksFailed(f"ranks exited {proc.returncode}: {' '.join(cmd)}\n--- output ---\n{out[-6000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def run_ranks(case: str, outdir: Path, np_: int = 2, timeout: float = 300, env: Optional[Dict[str, str]] = None,
              **kwargs: Any) -> List[Dict[str, np.ndarray]]:
    """Run a case of tests.dist_cases on np_ ranks (env: extra environment); return each rank's arrays in order."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "tests.dist_cases", case, str(outdir)]
    if kwargs:
        args.append(json.dumps(kwargs))
    proc = launch(args, np_=np_, timeout=timeout, env=env)
    results = []
    for r in range(np_):
        path = outdir / f"rank{r}.npz"
        if not path.exists():
            raise RanksFailed(f"rank {r} wrote no result {path.name}\n--- output ---\n{proc.stdout[-6000:]}")
        with np.load(path) as z:
            results.append({k: z[k] for k in z.files})
    return results


def spawn(args: List[str], output: Path, np_: int = 2, env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
    """Start `horovodrun -np np_ ... <args>` in the background (own session), its output going to `output`.

    For tests that signal or kill ranks while they run; end it with `finish`.
    """
    with open(output, "w") as out:
        return subprocess.Popen(horovodrun_command(args, np_), cwd=ROOT, env=rank_env(env), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def rank_pids(proc: subprocess.Popen, np_: int = 2, timeout: float = 120) -> Dict[int, int]:
    """{rank: pid} of the Python rank processes under a horovodrun started by `spawn` (waits for all)."""
    import psutil

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        found = {}
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                rank = child.environ().get("HOROVOD_RANK")
                if rank is not None and child.name().startswith("python"):
                    found[int(rank)] = child.pid
            except psutil.Error:
                continue
        if len(found) == np_:
            return found
        time.sleep(0.1)
    raise RanksFailed(f"the {np_} rank processes did not all appear within {timeout:.0f} s")


def finish(proc: subprocess.Popen, timeout: float) -> int:
    """Wait for a spawned horovodrun to end and return its exit code; past `timeout` kill it and fail.

    Whatever it started is killed too (the ranks run in sessions of their own).
    """
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RanksFailed(f"horovodrun still running after {timeout:.0f} s (hung ranks?)") from None
    finally:
        kill_tree(proc)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a spawned horovodrun and every process below it, by pid (idempotent)."""
    import psutil

    try:
        below = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        below = []
    for p in below:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


_RECORD_EXIT = 'trap : TERM INT; "$@"; code=$?; echo $code > "$0/exit-$HOROVOD_RANK"; exit $code'


def recording_exit_codes(args: List[str], folder: Path) -> List[str]:
    """`args` wrapped so that each rank writes its exit code into `folder`/exit-<rank> (read by exit_codes).

    The wrapping shell defers the launcher's SIGTERM until its rank has ended, so a rank that does
    not end by itself is SIGKILLed by horovodrun 5 s later and writes nothing.
    """
    Path(folder).mkdir(parents=True, exist_ok=True)
    return ["sh", "-c", _RECORD_EXIT, str(folder), *args]


def exit_codes(folder: Path) -> Dict[int, int]:
    """{rank: exit code} written by ranks started through recording_exit_codes (128 + n: killed by signal n)."""
    return {int(p.name.split("-")[1]): int(p.read_text()) for p in Path(folder).glob("exit-*")
            if p.read_text().strip()}
