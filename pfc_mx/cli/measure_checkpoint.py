"""Checkpoint save, check and load of a synthetic center shard: time, bytes and peak RSS growth per rank.

    horovodrun -np 2 -H localhost:2 --gloo python -m pfc_mx.cli.measure_checkpoint save runs/ck --classes 10000000 --dim 128
    python -m pfc_mx.cli.measure_checkpoint load runs/ck --classes 10000000 --dim 128     # 2 ranks -> 1

The same calls as training (checkpoint.save with the head's NDArrays, check_integrity on
rank 0, load_centers_into every rank's own rows), on random centers and a one-layer backbone,
so the figures are the checkpoint's own. `measure(phase, root, classes, dim)` is collective and
returns one record per rank (for tools/bench_scale.py); run as a module it prints them, one JSON
line each. Peak RSS growth is sampled every 5 ms over the phase, on top of the arrays
themselves (Linux /proc; None elsewhere).
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import mxnet as mx
from mxnet import gluon

from pfc_mx import dist
from pfc_mx.cli import positive_int, run_cli
from pfc_mx.checkpoint.layout import step_name
from pfc_mx.checkpoint.loading import check_integrity, load_centers_into
from pfc_mx.checkpoint.saving import save
from pfc_mx.proc_memory import status_kib
from pfc_mx.shard import shard_range

STEP = 1


def _rss() -> Optional[int]:
    """This process's resident set in bytes (None without /proc)."""
    try:
        return status_kib("VmRSS") * 1024
    except (OSError, RuntimeError):
        return None


class PeakRss:
    """Context manager: seconds and peak RSS growth (bytes, or None) of its block, sampled every 5 ms."""

    def __enter__(self) -> "PeakRss":
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self._began = time.perf_counter()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._take()

    def _take(self) -> None:
        now = _rss()
        if now is not None and self.peak is not None:
            self.peak = max(self.peak, now)

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self._began
        self._stop.set()
        self._thread.join()
        self._take()
        self.growth = None if self.base is None else self.peak - self.base


def _tiny_backbone() -> Any:
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(4))
    net.initialize()
    net.hybridize()
    net(mx.nd.ones((1, 4)))
    return net, gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9}, kvstore=None)


def measure(phase: str, root: Path, classes: int, dim: int) -> List[Dict[str, Any]]:
    """Collective: save (random centers) or load (into zeroed arrays) this world size's shards.

    Returns every rank's record: rank, rows, array bytes (weight + momentum), seconds, peak RSS
    growth in bytes; for a load also the check's and the load's seconds (the check runs on rank 0).
    """
    root = Path(root)
    start, rows = shard_range(classes, dist.size(), dist.rank())
    if phase == "save":
        mx.random.seed(dist.rank())
        weight = mx.nd.random.normal(0, 0.01, (rows, dim))
        momentum = mx.nd.random.normal(0, 0.001, (rows, dim))
    else:
        weight, momentum = mx.nd.zeros((rows, dim)), mx.nd.zeros((rows, dim))
    mx.nd.waitall()
    net, trainer = _tiny_backbone()
    record: Dict[str, Any] = {"phase": phase, "rank": dist.rank(), "world": dist.size(), "rows": rows,
                              "array_bytes": 2 * rows * dim * 4}
    dist.barrier()
    with PeakRss() as peak:
        if phase == "save":
            save(root, STEP, {"step": STEP}, net, trainer, (start, weight, momentum), 1,
                 lambda n, prefix: n.export(prefix))
        else:
            folder = root / step_name(STEP)
            began = time.perf_counter()
            if dist.rank() == 0:
                check_integrity(folder)
            record["check_seconds"] = time.perf_counter() - began
            dist.barrier()
            record["load_seconds"] = load_centers_into(folder, start, weight, momentum).seconds
    record.update(seconds=peak.seconds, rss_growth=peak.growth)
    return dist.allgather_object(record)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("phase", choices=["save", "load"])
    p.add_argument("root", type=Path, help="a checkpoints folder (load reads what save wrote there)")
    p.add_argument("--classes", type=positive_int, required=True)
    p.add_argument("--dim", type=positive_int, default=128)
    args = p.parse_args(argv)
    dist.init()
    records = measure(args.phase, args.root, args.classes, args.dim)
    if dist.rank() == 0:
        for r in records:
            print(json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
