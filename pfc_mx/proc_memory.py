"""A process's memory as Linux reports it, for the benchmarks: current and peak RSS, private bytes.

Usage::

    reset_peak_rss()                  # VmHWM restarts from the current RSS (import-time peaks do not count)
    before = status_kib("VmRSS")
    ...
    growth_kib = status_kib("VmHWM") - before
    private_kib(worker.pid)           # what a forked worker does not share with its parent
"""
from __future__ import annotations


def status_kib(field: str, pid: "int | str" = "self") -> int:
    """A KiB field of /proc/PID/status (VmRSS, VmHWM, ...)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} missing in /proc/{pid}/status")


def reset_peak_rss() -> None:
    """Make VmHWM restart from the current RSS (Linux ≥ 4.0); nothing where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def private_kib(pid: int) -> int:
    """KiB of a process's private pages (clean + dirty): its own memory, not what it shares after fork."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return sum(int(line.split()[1]) for line in f if line.startswith(("Private_Clean:", "Private_Dirty:")))
