"""Train a face-recognition model with Partial FC.

    horovodrun -np 8 -H localhost:8 python train_horovod.py configs/ms1mv3_r50.yaml
    python train_horovod.py configs/demo.yaml --set optim.lr=0.05 data.rec=/data/ms1m

Reads the config, validates it, and hands over to pfc_mx.train.
Exit codes: 0 finished; 2 a user error (one line); 75 stopped by SIGTERM/SIGINT after
saving a checkpoint (rerun to resume); 69 another rank died or froze (docs/reliability.md).
"""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    from pfc_mx.cli import ArgumentParser
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="YAML recipe, e.g. configs/ms1mv3_r50.yaml")
    parser.add_argument("--set", nargs="+", default=[], metavar="SECTION.KEY=VALUE",
                        help="override config values, e.g. --set optim.lr=0.2 data.batch_size=64")
    args = parser.parse_args(argv)
    # `--set a=b cfg.yaml`: argparse hands the config path to --set; an override always has a '='
    loose = [s for s in args.set if "=" not in s]
    args.set = [s for s in args.set if "=" in s]
    if args.config is None and len(loose) == 1:
        args.config, loose = loose[0], []
    if args.config is None or loose:
        from pfc_mx.errors import ConfigError
        raise ConfigError(f"unexpected argument(s) {' '.join(loose)}: overrides are SECTION.KEY=VALUE"
                          if loose else "give the config file: train_horovod.py CONFIG [--set SECTION.KEY=VALUE ...]")

    from pfc_mx import dist, strict_json
    from pfc_mx.config import load_config
    from pfc_mx.train import train
    from pfc_mx.train.faults import EXIT_PREEMPTED

    cfg = load_config(args.config, args.set)
    try:
        summary = train(cfg)
    except Exception as e:  # the reason goes into this rank's log as well as to the terminal (run_cli)
        from pfc_mx.errors import PfcError, first_line
        from pfc_mx.train.reporting import record_fatal
        from pfc_mx.train.run_lock import RunLockedError
        if isinstance(e, RunLockedError):  # the logs there belong to the job holding the folder
            raise
        if isinstance(e, PfcError):
            record_fatal(f"error: {e}", Path(cfg.output.dir))
        else:
            record_fatal(f"{type(e).__name__}: {first_line(e)}\n{traceback.format_exc()}", Path(cfg.output.dir))
        raise
    if dist.rank() == 0:
        print("summary: " + strict_json.dumps(summary, sort_keys=True))
    return EXIT_PREEMPTED if summary["preempted"] else 0


if __name__ == "__main__":
    from pfc_mx.cli import run_cli
    sys.exit(run_cli(main))
