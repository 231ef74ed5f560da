"""How a run meets faults: stop signals (preemption) and failures on one rank, agreed at step boundaries.

Usage (what the training loop does)::

    with StopSignals() as signals:                    # in pfc_mx.train.job, inside a RankMonitor
        for step in ...:
            batch, error = fetch()                        # an exception is kept, not raised
            stop, failed = agree(signals.received is not None, error is not None)
            if failed:
                raise_if_any(error)                      # all ranks stop with the same message
            if stop:
                ...save a checkpoint, return EXIT_PREEMPTED...

Exit codes of train_horovod.py (docs/reliability.md): 0 finished, 2 a PfcError (one line),
EXIT_PREEMPTED after a stop signal and a complete checkpoint, EXIT_RANK_LOST when another rank
died or froze (pfc_mx.train.rank_monitor names the lost rank and ends this process; `peer_lost`
tells such a collective failure from others).
"""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Dict, List, Optional, Tuple

import mxnet as mx

from pfc_mx import dist, errors
from pfc_mx.train.processes import any_gone, launchers

log = logging.getLogger("pfc_mx.train")

EXIT_PREEMPTED = 75  # sysexits EX_TEMPFAIL: stopped by a signal after saving; rerun to resume
EXIT_RANK_LOST = 69  # sysexits EX_UNAVAILABLE: another rank died or stopped answering
STOP_FLAG = "pfc_mx.stop_flag"


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
        if self._launchers and any_gone(self._launchers[-1:]):  # horovodrun itself
            os.write(2, f"pfc_mx: {signal.Signals(signum).name} after horovodrun ended: stopping at once, no checkpoint\n"
                        .encode())
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = signal.Signals(signum).name

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._launchers = launchers()
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
