"""Small-scale studies of the Partial FC papers' claims, on the synthetic face generator.

    python tools/study.py rate    # a. sample rate 1.0 / 0.3 / 0.1 on clean data, 3 seeds (~16 min on 2 cores)
    python tools/study.py noise   # b. 40% label flips, 30% conflicting classes: rate 1.0 vs 0.1 ± filtering,
                                  #    2 seeds (~15-20 min)
    python tools/study.py cost    # c. FC-layer step time and memory against the number of classes (~5 min)
    python tools/study.py report  # tables and plots again from the saved JSON, without training

a and b train configs/demo.yaml's small IResNet from scratch, one fresh single-process
`train_horovod.py` per (condition, arm, seed) (--jobs at a time, the cores split between
them), on datasets made by pfc_mx.data.synthetic (cached under --work), and record the
held-out verification accuracy (10-fold, flip) at the end of training. c builds the
Partial FC head alone in a fresh process per (C, rate) with tools/bench_pfc.py, after
predicting its memory; a configuration whose prediction does not fit is recorded as
"does not fit", not run. Every study writes <out>/<study>.json (all runs, settings and
the command), <out>/<study>.md (tables) and <out>/<study>.png. Progress goes to stderr.

This file is the command line; the studies are study_training.py (a, b) and study_cost.py (c).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from pfc_mx.cli import (ArgumentParser, comma_list, fraction, int_at_least, non_negative_int, number,
                        positive_int, run_cli)
from pfc_mx.cli.plan import parse_size
from pfc_mx.errors import DatasetError
from pfc_mx.capacity import GiB

import study_cost  # the studies, beside this file in tools/
import study_training
from study_common import clock

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ("rate", "noise", "cost")
DEFAULT_SEEDS = {"rate": (0, 1, 2), "noise": (0, 1)}  # each study about 15-20 minutes on 2 cores


def write_report(record: Dict[str, Any], out: Path) -> str:
    """<out>/<study>.md and .png from a study's record; returns the markdown."""
    study = record["study"]
    text = study_cost.cost_tables(record) if study == "cost" else study_training.accuracy_table(record)
    text = f"command: `{record.get('command', '')}`, wall time {clock(record.get('wall_seconds', 0))}\n\n{text}\n"
    (out / f"{study}.md").write_text(text)
    plot = study_cost.plot_cost if study == "cost" else study_training.plot_accuracy
    plot(record, out / f"{study}.png")
    return text


# ---------------------------------------------------------------- command line
rate = number(float, 0.0, 1.0, low_open=True, what="in (0, 1]")     # a sample rate
below_one = number(float, 0.0, 1.0, high_open=True, what="in [0, 1)")


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", default=str(ROOT / "docs" / "study"), help="JSON, tables and plots go here")
    train = argparse.ArgumentParser(add_help=False)
    train.add_argument("--work", default=str(ROOT / "work_dirs" / "study"), help="datasets and runs go here")
    # default per study (DEFAULT_SEEDS): each fits in about 20 minutes on 2 cores
    train.add_argument("--seeds", type=comma_list(non_negative_int), default=None, help="training seeds (data "
                       "stays fixed); default 0,1,2 for rate, 0,1 for noise (2 datasets × 3 arms)")
    train.add_argument("--jobs", type=positive_int, default=2, help="trainings at a time; cores are split between them")
    train.add_argument("--identities", type=positive_int, default=1000, help="training classes")
    train.add_argument("--images", type=positive_int, default=8, help="images per training class")
    train.add_argument("--holdout", type=int_at_least(2), default=300, help="held-out identities of the verification pairs")
    train.add_argument("--pairs", type=int_at_least(2), default=1200, help="verification pairs")
    train.add_argument("--data-seed", type=non_negative_int, default=0)
    train.add_argument("--batch", type=positive_int, default=32)
    train.add_argument("--steps", type=positive_int, default=240)
    train.add_argument("--warmup", type=number(float, 0.0, what=">= 0"), default=0.1, help="warm-up epochs")
    sub = p.add_subparsers(dest="study", required=True)
    a = sub.add_parser("rate", parents=[common, train], help="a. sample rates on clean data")
    a.add_argument("--rates", type=comma_list(rate), default=[1.0, 0.3, 0.1])
    b = sub.add_parser("noise", parents=[common, train], help="b. label flips and inter-class conflict")
    b.add_argument("--label-flip", type=fraction, default=0.4)
    b.add_argument("--conflict", type=below_one, default=0.3, help="fraction of classes that duplicate an identity")
    b.add_argument("--noise-rate", type=rate, default=0.1)
    b.add_argument("--threshold", type=below_one, default=0.4, help="inter-class filtering threshold")
    c = sub.add_parser("cost", parents=[common], help="c. head time and memory against C")
    c.add_argument("--classes", type=comma_list(positive_int), default=sorted(study_cost.ARCFACE_TORCH))
    c.add_argument("--rates", type=comma_list(rate), default=[1.0, 0.1])
    c.add_argument("--dim", type=positive_int, default=512)
    c.add_argument("--batch", type=positive_int, default=256, help="N, embeddings per step")
    c.add_argument("--steps", type=positive_int, default=2, help="timed steps after one warm-up step")
    c.add_argument("--memory-limit", type=parse_size, default=16 * GiB,
                   help="at most this much (or MemAvailable, if less) for one configuration, e.g. 16GiB")
    c.add_argument("--headroom", type=below_one, default=0.1, help="fraction of the limit kept free")
    sub.add_parser("report", parents=[common], help="tables and plots from <out>/<study>.json")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = parser().parse_args(argv)
    if args.study in DEFAULT_SEEDS and args.seeds is None:
        args.seeds = list(DEFAULT_SEEDS[args.study])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.study == "report":
        found = [out / f"{s}.json" for s in STUDIES if (out / f"{s}.json").is_file()]
        if not found:
            raise DatasetError(f"no study JSON ({', '.join(STUDIES)}) in {out}")
        for path in found:
            print(write_report(json.loads(path.read_text()), out))
        return 0
    t0, load0 = time.time(), os.getloadavg()
    record = (study_cost.run_cost_study if args.study == "cost" else study_training.run_training_study)(args)
    record["command"] = "python tools/study.py " + " ".join(argv if argv is not None else sys.argv[1:])
    record["wall_seconds"] = round(time.time() - t0, 1)
    record["machine"] = {"cpus": os.cpu_count(), "load_average_at_start": load0,
                         "load_average_at_end": os.getloadavg()}
    (out / f"{args.study}.json").write_text(json.dumps(record, indent=1))
    print(write_report(record, out))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
