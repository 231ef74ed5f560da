"""A training job on this rank, around the step loop: the output folder and its lock, logs, the
heartbeat monitor, stop signals, and the orderly end.

summary["preempted"] is True when a SIGTERM/SIGINT stopped the run after a complete checkpoint
(train_horovod.py then exits with faults.EXIT_PREEMPTED). When another rank is lost, this
process ends with faults.EXIT_RANK_LOST instead of returning (docs/reliability.md).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import mxnet as mx

from pfc_mx import dist
from pfc_mx.config import Config, check_data_paths
from pfc_mx.errors import ConfigError, first_line
from pfc_mx.train import faults
from pfc_mx.train.rank_monitor import RankMonitor
from pfc_mx.train.injection import Injection
from pfc_mx.train.loop import Run
from pfc_mx.train.reporting import setup_logging
from pfc_mx.train.run_lock import RunLock, RunLockedError

log = logging.getLogger("pfc_mx.train")


def prepare_output(cfg: Config) -> Tuple[Path, Optional[RunLock]]:
    """Create the output folder and take its run lock (rank 0); check every rank can see and write it.

    Returns (folder, the lock on rank 0 / None elsewhere). ConfigError on every rank when the
    folder is not writable or another live job holds it (pfc_mx.train.run_lock).
    """
    out = Path(cfg.output.dir)
    error: Tuple[str, bool] = ("", False)  # (message, whether another job holds the folder)
    lock: Optional[RunLock] = None
    if dist.rank() == 0:
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".write-test"
            probe.write_text("ok")
            probe.unlink()
            lock = RunLock(out).acquire()
        except OSError as e:
            error = (f"output.dir {out} is not writable: {e.strerror or e}", False)
        except ConfigError as e:
            error = (str(e), isinstance(e, RunLockedError))
    message, locked = dist.broadcast_object(error, root=0)
    if message:
        raise (RunLockedError if locked else ConfigError)(message)
    return out, lock


def train(cfg: Config, injection: Optional[Injection] = None) -> Dict[str, Any]:
    """Run (or resume) training as described by cfg on this rank; return a summary on every rank.

    injection: faults to inject (test hooks); None reads them from the environment.
    """
    dist.init()
    check_data_paths(cfg)
    out, lock = prepare_output(cfg)
    setup_logging(out)
    if lock is not None and lock.took_over:
        log.warning(lock.took_over)
    monitor = RankMonitor(out / "logs" / "heartbeat")
    run: Optional[Run] = None
    preempted = False
    with faults.StopSignals() as signals:  # also covers the closing work: a launcher's SIGTERM waits for it
        try:
            monitor.start()
            run = Run(cfg, out, injection or Injection.from_env())
            summary = run.execute(signals)
            preempted = summary["preempted"]
            if preempted:
                signals.hold()
            dist.barrier()  # no rank leaves while another one still needs it in a collective
        except mx.base.MXNetError as e:
            if faults.peer_lost(e):
                monitor.fail(f"a collective failed ({first_line(e).split('. ')[0]})")
            raise
        finally:
            monitor.stop()
            if run is not None:
                run.close(plot=not preempted)  # preempted: a launcher's grace period is short, the resume plots
            if lock is not None:
                lock.release()
    if preempted:
        log.info("rank %d stops after the preemption checkpoint (exit code %d)", dist.rank(), faults.EXIT_PREEMPTED)
    return summary
