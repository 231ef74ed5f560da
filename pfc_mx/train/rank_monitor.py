"""Which rank is lost, and ending this one when it is: heartbeats in the output folder and same-host pids.

Usage (what pfc_mx.train.job does)::

    monitor = RankMonitor(out / "logs" / "heartbeat").start()    # collective: learns the peers
    try:
        ...train...
    except mx.base.MXNetError as e:
        if faults.peer_lost(e):
            monitor.fail("a collective failed")                  # names the lost rank, exits 69
        raise
    finally:
        monitor.stop()

A lost rank makes Horovod shut down (at once when its connections break, after
HOROVOD_GLOO_TIMEOUT_SECONDS, default 30, when it freezes); `fail` then names it and ends this
process with os._exit(EXIT_RANK_LOST), since a normal exit would wait in Horovod's shutdown for
the dead peer.
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, NoReturn, Optional, Sequence, Tuple

from pfc_mx import dist
from pfc_mx.train.faults import EXIT_RANK_LOST
from pfc_mx.train.processes import alive, pid_namespace

log = logging.getLogger("pfc_mx.train")
_exit = os._exit  # replaced in unit tests


class RankMonitor:
    """Names lost ranks: a same-host peer whose process is gone, or a peer whose heartbeat stopped.

    Every rank's thread writes a counter into `<folder>/rank{r}` every interval_s (the output
    folder is shared by all ranks, as checkpoints need). `fail` is called when a collective
    failed; as a last resort the thread itself calls it when a same-host peer has been gone for
    orphan_timeout_s while this rank still runs. peers: [(host, pid namespace, pid)] per rank
    (default: gathered from all ranks in start()).
    """

    def __init__(self, folder: Path, interval_s: float = 1.0, orphan_timeout_s: float = 30.0,
                 peers: Optional[Sequence[Tuple[str, str, int]]] = None, rank: Optional[int] = None) -> None:
        self.folder = Path(folder)
        self.interval_s, self.orphan_timeout_s = interval_s, orphan_timeout_s
        self.peers = list(peers) if peers is not None else None
        self.rank = rank
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "RankMonitor":
        """Collective (unless peers were given): learn the peers and start the heartbeat thread."""
        if self.rank is None:
            self.rank = dist.rank()
        if self.peers is None:
            self.peers = dist.allgather_object((socket.gethostname(), pid_namespace(), os.getpid()))
        if len(self.peers) > 1:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._thread = threading.Thread(target=self._run, name="pfc-rank-monitor", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the heartbeat thread (idempotent)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None

    def _run(self) -> None:
        beat, gone_since = 0, {}
        while not self._stop.is_set():
            beat += 1
            try:
                (self.folder / f"rank{self.rank}").write_text(f"{beat}\n")
            except OSError:
                pass  # a full disk must not end the run from here; lost_ranks then relies on pids
            now = time.monotonic()
            for r in self._gone_local():
                gone_since.setdefault(r, now)
            if any(now - t > self.orphan_timeout_s for t in gone_since.values()):
                self.fail(f"no collective reported it within {self.orphan_timeout_s:g} s")
            self._stop.wait(self.interval_s)

    def _gone_local(self) -> List[int]:
        host, ns = socket.gethostname(), pid_namespace()
        return [r for r, (h, n, pid) in enumerate(self.peers or [])
                if r != self.rank and (h, n) == (host, ns) and not alive(pid)]

    def _beats(self) -> Dict[int, Optional[str]]:
        beats: Dict[int, Optional[str]] = {}
        for r in range(len(self.peers or [])):
            try:
                beats[r] = (self.folder / f"rank{r}").read_text()
            except OSError:
                beats[r] = None
        return beats

    def lost_ranks(self, wait_s: Optional[float] = None) -> Dict[int, str]:
        """{rank: why} of the lost peers: gone same-host processes, else heartbeats unchanged over wait_s.

        A killed peer's connections close while the kernel still tears the process down (it shows
        as running until it becomes a zombie), so the process table is read again after the wait.
        """
        gone = self._gone_local()
        if not gone:
            wait_s = 2.5 * self.interval_s if wait_s is None else wait_s
            before = self._beats()
            time.sleep(wait_s)
            after = self._beats()
            gone = self._gone_local()
            if not gone:
                return {r: f"no heartbeat for {wait_s:.1f} s (frozen, or its host is down)"
                        for r in after if r != self.rank and (after[r] is None or after[r] == before[r])}
        return {r: "its process is gone (exited or killed)" for r in gone}

    def fail(self, cause: str) -> NoReturn:
        """Log which ranks are lost and why, then end this process with EXIT_RANK_LOST."""
        lost = self.lost_ranks()
        who = "; ".join(f"rank {r} (pid {self.peers[r][2]} on {self.peers[r][0]}) is lost: {why}"
                        for r, why in sorted(lost.items())) or "lost contact with the other ranks (none identified)"
        message = (f"{who}; {cause}. Rank {self.rank} stops with exit code {EXIT_RANK_LOST}; "
                   "rerun to resume from the last complete checkpoint")
        log.error(message)
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stderr.write(f"error: {message}\n")  # the process ends here, not in run_cli
        sys.stderr.flush()
        _exit(EXIT_RANK_LOST)
