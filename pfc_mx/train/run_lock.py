"""One run per output folder: a lock file that rank 0 holds for the whole run.

`<output>/run.lock` is created with O_EXCL and holds its owner as JSON (host, pid namespace,
pid, the process's start ticks, start time). While the run lives a thread touches the file
every `beat_s` seconds. Another job that finds the lock

- takes it over when the lock is stale (`took_over` then names the old holder and why): its holder
  ran on this host and its process is gone (or the pid now names another process), or it ran
  elsewhere and the file has not been touched for `stale_s` seconds (the holder's host is down),
  or the file is empty or unreadable and that old;
- otherwise stops with RunLockedError (exit code 2) naming the holder.

The output folder is shared by every rank (checkpoints need it), so ranks on other hosts see
the same file. A take-over renames the stale file away first; of two jobs that race for the
same stale lock only one renames that file and creates the new one.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Dict, Optional

from pfc_mx.errors import ConfigError
from pfc_mx.train.processes import any_gone, pid_namespace, proc_stat

LOCK_NAME = "run.lock"


class RunLockedError(ConfigError):
    """Another live job holds the output folder."""


def _me() -> Dict[str, Any]:
    stat = proc_stat(os.getpid())
    return {"host": socket.gethostname(), "pid_ns": pid_namespace(), "pid": os.getpid(),
            "start_ticks": stat[2] if stat else None, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def describe(holder: Dict[str, Any]) -> str:
    if not holder:
        return "a job that has not written its name yet"
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"


class RunLock:
    """The lock of one output folder (acquire / release; a context manager)."""

    def __init__(self, folder: Path, beat_s: float = 5.0, stale_s: float = 60.0) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.beat_s, self.stale_s = beat_s, stale_s
        self.owner = _me()
        self._text = json.dumps(self.owner, sort_keys=True)
        self.took_over = ""  # what acquire() found and replaced: for the run's log, once it has one
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def stale_reason(self, holder: Dict[str, Any], age_s: float) -> str:
        """Why a lock held by `holder`, last touched age_s seconds ago, is stale; '' if it is live."""
        if (holder.get("host"), holder.get("pid_ns")) == (self.owner["host"], self.owner["pid_ns"]):
            return "its process is gone" if any_gone([(int(holder.get("pid", 0)), holder.get("start_ticks"))]) else ""
        if age_s > self.stale_s:
            return f"not refreshed for {age_s:.0f} s"
        return ""

    def acquire(self) -> "RunLock":
        """Take the lock; RunLockedError naming the holder when another live job has it."""
        for _ in range(3):  # a lock that vanishes between the attempts is tried again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                f.write(self._text)
            self._thread = threading.Thread(target=self._beat, name="pfc-run-lock", daemon=True)
            self._thread.start()
            return self
        raise RunLockedError(f"{self.path}: could not take the lock (other jobs are starting in this folder)")

    def _take_over_if_stale(self) -> None:
        try:
            text = self.path.read_text()
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return
        try:
            holder = json.loads(text)
        except ValueError:
            holder = {}
        if not isinstance(holder, dict):
            holder = {}
        if holder:
            why = self.stale_reason(holder, age)
        else:  # empty while its job writes it, or left so by a crash: stale once old
            why = f"it is unreadable and {age:.0f} s old" if age > self.stale_s else ""
        if not why:
            raise RunLockedError(f"{self.path.parent} is in use by another run ({describe(holder)}); "
                                 "wait for it, stop it, or choose another output.dir")
        aside = self.path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another job took it over first
        if aside.read_text() != text:  # we moved a lock that was created after our read: give it back
            os.rename(aside, self.path)
            raise RunLockedError(f"{self.path.parent} is being taken by another job; choose another output.dir")
        aside.unlink()
        self.took_over = f"took over the stale lock of {self.path.parent} ({describe(holder)}): {why}"

    def _beat(self) -> None:
        while not self._stop.wait(self.beat_s):
            try:
                os.utime(self.path)
            except OSError:
                pass  # a full disk or a vanished file must not end the run from here

    def release(self) -> None:
        """Stop refreshing and remove the lock if it is still ours (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
            try:
                if self.path.read_text() == self._text:
                    self.path.unlink()
            except OSError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
