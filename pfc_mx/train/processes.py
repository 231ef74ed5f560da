"""Processes of this host, read from /proc: whether one still runs, and the launchers above a rank.

A process is named by (pid, start time in clock ticks since boot): the ticks are fixed for the
life of a process, so a reused pid is told apart. Used by the fault handling (pfc_mx.train.faults,
pfc_mx.train.rank_monitor) and the run lock (pfc_mx.train.run_lock). Without /proc every
function answers "unknown" (None, [] or False), never raises.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple


def proc_stat(pid: int) -> Optional[Tuple[str, int, int]]:
    """(state letter, parent pid, start time in clock ticks since boot) of a process; None when gone.

    Read from /proc/<pid>/stat: the start time in ticks is fixed for the life of a process (unlike
    a wall-clock start time, which moves when the clock is stepped), so (pid, ticks) names one
    process even after its pid is reused.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # fields 3… of proc(5); the name may hold spaces
    return fields[0], int(fields[1]), int(fields[19])


def launchers(pid: Optional[int] = None) -> List[Tuple[int, int]]:
    """(pid, start ticks) of the processes between this rank and the `horovodrun` that launched it,
    that launcher included; [] when no horovodrun is among the ancestors (another launcher, a plain
    process, a rank on a remote host, or no /proc)."""
    chain: List[Tuple[int, int]] = []
    stat = proc_stat(os.getpid() if pid is None else pid)
    while stat is not None and stat[1] > 1:
        parent = stat[1]
        stat = proc_stat(parent)
        if stat is None:
            return []
        chain.append((parent, stat[2]))
        try:
            with open(f"/proc/{parent}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            return []
        if any(os.path.basename(a) == b"horovodrun" for a in argv[:2]):  # the script, or python running it
            return chain
    return []


def any_gone(processes: Sequence[Tuple[int, int]]) -> bool:
    """Whether one of the (pid, start ticks) processes has ended (a zombie, not yet reaped, has)."""
    for pid, started in processes:
        stat = proc_stat(pid)
        if stat is None or stat[2] != started or stat[0] == "Z":
            return True
    return False


def pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Whether process pid (in this pid namespace) still runs (a zombie counts as gone)."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"
