"""How a run meets faults: stop signals (preemption), lost ranks, failures on one rank.

Usage (what the training loop does)::

    with StopSignals() as signals, RankMonitor(out / "logs" / "heartbeat") as monitor:
        for step in ...:
            batch, error = fetch()                        # an exception is kept, not raised
            stop, failed = agree(signals.received is not None, error is not None)
            if failed:
                raise_if_any(error)                      # all ranks stop with the same message
            if stop:
                ...save a checkpoint, return EXIT_PREEMPTED...

Exit codes of train_horovod.py (docs/reliability.md): 0 finished, 2 a PfcError (one line),
EXIT_PREEMPTED after a stop signal and a complete checkpoint, EXIT_RANK_LOST when another rank
died or froze. A lost rank makes Horovod shut down (at once when its connections break, after
HOROVOD_GLOO_TIMEOUT_SECONDS, default 30, when it freezes); RankMonitor.fail then names it and
ends this process with os._exit, since a normal exit would wait in Horovod's shutdown for the
dead peer.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, NoReturn, Optional, Sequence, Tuple

import mxnet as mx

from pfc_mx import dist, errors

log = logging.getLogger("pfc_mx.train")

EXIT_PREEMPTED = 75  # sysexits EX_TEMPFAIL: stopped by a signal after saving; rerun to resume
EXIT_RANK_LOST = 69  # sysexits EX_UNAVAILABLE: another rank died or stopped answering
STOP_FLAG = "pfc_mx.stop_flag"
_exit = os._exit  # replaced in unit tests


def _proc_stat(pid: int) -> Optional[Tuple[str, int, int]]:
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


def _launchers(pid: Optional[int] = None) -> List[Tuple[int, int]]:
    """(pid, start ticks) of the processes between this rank and the `horovodrun` that launched it,
    that launcher included; [] when no horovodrun is among the ancestors (another launcher, a plain
    process, a rank on a remote host, or no /proc)."""
    chain: List[Tuple[int, int]] = []
    stat = _proc_stat(os.getpid() if pid is None else pid)
    while stat is not None and stat[1] > 1:
        parent = stat[1]
        stat = _proc_stat(parent)
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


def _any_gone(processes: Sequence[Tuple[int, int]]) -> bool:
    """Whether one of the (pid, start ticks) processes has ended (a zombie, not yet reaped, has)."""
    for pid, started in processes:
        stat = _proc_stat(pid)
        if stat is None or stat[2] != started or stat[0] == "Z":
            return True
    return False


class StopSignals:
    """While active, SIGTERM and SIGINT only record their name in `received`; handlers restored on exit.

    A signal that arrives after the horovodrun that launched this rank has ended (horovodrun killed
    with SIGKILL: its helpers then send SIGTERM) is a hard stop: the default action runs at once, as
    if the whole job had been killed. The helper processes between horovodrun and the rank are not
    watched: when a live horovodrun stops a job (Ctrl-C, or a rank that ended) it signals helpers
    and ranks together, and a helper that is already gone must not turn that normal stop into a
    kill without checkpoint. Processes above horovodrun (a shell, a login session) are not
    watched either. Installed only in the main thread; elsewhere a no-op.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: Optional[str] = None
        self._previous: Dict[int, object] = {}
        self._launchers: List[Tuple[int, int]] = []

    def _handle(self, signum: int, frame: object) -> None:
        if self._launchers and _any_gone(self._launchers[-1:]):  # horovodrun itself
            os.write(2, f"pfc_mx: {signal.Signals(signum).name} after horovodrun ended: stopping at once, no checkpoint\n"
                        .encode())
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signal.Signals(signum).name

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._launchers = _launchers()
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def hold(self) -> None:
        """Ignore SIGTERM and SIGINT from now on, also after the block: the run stopped after a
        preemption checkpoint, and a launcher's follow-up signal must not change the exit code.

        At once, not only when the block ends: when the first rank leaves, horovodrun ends the
        others' launcher processes and signals them again, which the handler would take for a
        hard stop (seen as exit 143 instead of 75 on a rank still closing down).
        """
        self._previous = {s: signal.SIG_IGN for s in self._previous}
        for s in self._previous:
            signal.signal(s, signal.SIG_IGN)


def agree(signalled: bool, failed: bool) -> Tuple[List[int], List[int]]:
    """Collective at a step boundary: (ranks that received a stop signal, ranks that failed).

    One tiny all-gather named STOP_FLAG, so every rank takes the same decision at the same step.
    """
    flags = mx.nd.array([[float(signalled), float(failed)]], dtype="float32")
    gathered = dist.allgather(flags, name=STOP_FLAG).asnumpy()
    return ([r for r in range(len(gathered)) if gathered[r, 0]],
            [r for r in range(len(gathered)) if gathered[r, 1]])


def raise_if_any(local: Optional[BaseException]) -> None:
    """Collective: return when no rank passed an error; else every rank raises the lowest failing rank's.

    That rank re-raises its own exception; the others raise the same PfcError class (TrainingError
    for anything else) with the message prefixed by `rank r:`. Use it around work that may fail on
    some ranks only, so that no rank is left waiting in the next collective.
    """
    mine = (type(local).__name__, errors.first_line(local)) if local is not None else None
    reports = dist.allgather_object(mine)
    failed = [(r, rep) for r, rep in enumerate(reports) if rep is not None]
    if not failed:
        return
    rank, (kind, message) = failed[0]
    if local is not None and rank != dist.rank():  # keep this rank's own reason in its log (rank r's is raised)
        log.error("rank %d failed too: %s: %s", dist.rank(), mine[0], mine[1])
    if local is not None and rank == dist.rank():
        raise local
    cls = getattr(errors, kind, None)
    if not (isinstance(cls, type) and issubclass(cls, errors.PfcError)):
        cls, message = errors.TrainingError, f"{kind}: {message}; see logs/rank{rank}.log"
    raise cls(f"rank {rank}: {message}")


# What a failed collective says: Horovod's shutdown ("Horovod has been shut down"), or Gloo's transport
# reporting the broken connection itself ('File "Read error [127.0.0.1]" ... Connection reset by peer').
PEER_LOST_MARKERS = ("horovod", "gloo", "connection reset", "connection closed", "connection refused",
                     "broken pipe", "read error", "write error", "timed out")


def peer_lost(error: BaseException) -> bool:
    """True when an MXNet error comes from a collective that failed (a peer died or froze)."""
    text = str(error).lower()
    return dist.size() > 1 and any(marker in text for marker in PEER_LOST_MARKERS)


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    """Whether process pid (in this pid namespace) still runs (a zombie counts as gone)."""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] != "Z"


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
            self.peers = dist.allgather_object((socket.gethostname(), _pid_namespace(), os.getpid()))
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

    def __enter__(self) -> "RankMonitor":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

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
        host, ns = socket.gethostname(), _pid_namespace()
        return [r for r, (h, n, pid) in enumerate(self.peers or [])
                if r != self.rank and (h, n) == (host, ns) and not _alive(pid)]

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
