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
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML recipe, e.g. configs/ms1mv3_r50.yaml")
    parser.add_argument("--set", nargs="+", default=[], metavar="SECTION.KEY=VALUE",
                        help="override config values, e.g. --set optim.lr=0.2 data.batch_size=64")
    args = parser.parse_args(argv)

    from pfc_mx import dist, strict_json
    from pfc_mx.config import load_config
    from pfc_mx.train import train
    from pfc_mx.train.faults import EXIT_PREEMPTED

    cfg = load_config(args.config, args.set)
    summary = train(cfg)
    if dist.rank() == 0:
        print("summary: " + strict_json.dumps(summary, sort_keys=True))
    return EXIT_PREEMPTED if summary["preempted"] else 0


if __name__ == "__main__":
    from tools._cli import run_cli
    sys.exit(run_cli(main))
