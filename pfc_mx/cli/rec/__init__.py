"""Face RecordIO datasets on the command line: inspect, validate, build, unpack, shuffle, synth.

    python tools/rec.py inspect  DATA                 counts, class histogram, sampled image sizes
    python tools/rec.py validate DATA                 read + decode every record, compare every header with the
                                                      identity records; exit 1 on damaged ones or disagreements
    python tools/rec.py build    SRC OUT              image folder (one sub-folder per identity) -> insightface layout
    python tools/rec.py build    --list L.lst OUT     im2rec list "index<TAB>label<TAB>path" -> insightface layout
    python tools/rec.py unpack   DATA OUT             OUT/<class>/<record key>.<jpg|png>
    python tools/rec.py shuffle  DATA OUT             records in random order (flat layout by default)
    python tools/rec.py synth    OUT --identities N   the synthetic face-identity dataset
    python tools/rec.py pairs    PAIRS.txt OUT.bin    verification pairs "a.jpg b.jpg 1|0" -> insightface .bin

DATA is a folder with train.rec/train.idx[/property] or a .rec with its .idx beside it.
shuffle --layout flat writes every image at keys 0..n-1 in a seeded random order (what
sequential readers such as mx.io.ImageRecordIter need); --layout insightface keeps each
identity's images contiguous, because identity records can only name a contiguous range:
it shuffles the order of the identity blocks and the images inside each block, and
rebuilds the header and identity records (identity record of class c stays at key a + c).
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from pfc_mx.cli import ArgumentParser, fraction, int_at_least, non_negative_int, number, positive_int, run_cli
from pfc_mx.cli.rec import build, check, convert  # the jobs: build/pairs/synth, inspect/validate, unpack/shuffle
from pfc_mx.data.options import IMAGE_SIZE

quality = number(int, 0, 100, what="in [0, 100]")
below_one = number(float, 0.0, 1.0, high_open=True, what="in [0, 1)")


def main(argv: Optional[List[str]] = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="counts, class histogram, sampled image sizes")
    p.add_argument("data")
    p.add_argument("--sample", type=positive_int, default=200, help="images decoded for the size summary")
    p = sub.add_parser("validate", help="read and decode every record: damaged ones (exit 1), out-of-range labels "
                       "(exit 1), header classes that disagree with the identity records (exit 1), sizes, "
                       "channels, empty classes")
    p.add_argument("data")
    p.add_argument("--workers", type=positive_int, default=2)
    p.add_argument("--show", type=non_negative_int, default=20, help="problems listed per kind")
    p = sub.add_parser("build", help="image folder or im2rec list -> insightface layout")
    p.add_argument("src", nargs="?", help="folder with one sub-folder per identity (sorted names -> class ids)")
    p.add_argument("out", help="output folder (train.rec, train.idx, property)")
    p.add_argument("--list", help="im2rec list file 'index<TAB>label<TAB>path' instead of SRC")
    p.add_argument("--root", help="folder the list's paths are relative to (default: the list's folder)")
    p.add_argument("--size", type=int_at_least(8), default=IMAGE_SIZE, help="images of another size are resized to SIZE×SIZE")
    p.add_argument("--quality", type=quality, default=95, help="JPEG quality of re-encoded images")
    p.add_argument("--reencode", action="store_true", help="re-encode every image as JPEG (default: keep bytes)")
    p.add_argument("--workers", type=positive_int, default=2)
    p.add_argument("--force", action="store_true", help="overwrite an existing train.rec")
    p = sub.add_parser("unpack", help="records -> OUT/<class>/<key>.<ext>")
    p.add_argument("data")
    p.add_argument("out")
    p.add_argument("--limit", type=non_negative_int, help="only the first N images")
    p = sub.add_parser("shuffle", help="records in a seeded random order into a new dataset")
    p.add_argument("data")
    p.add_argument("out", help="output folder (train.rec) or .rec path")
    p.add_argument("--layout", choices=("flat", "insightface"), default="flat")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p = sub.add_parser("pairs", help="verification pairs list -> insightface .bin")
    p.add_argument("pairs", help="text file, one pair per line: 'image_a image_b 1|0' (1: same person)")
    p.add_argument("out", help="the .bin to write")
    p.add_argument("--root", help="folder the image paths are relative to (default: the list's folder)")
    p.add_argument("--size", type=int_at_least(8), default=IMAGE_SIZE, help="images of another size are resized")
    p = sub.add_parser("synth", help="synthetic face-identity dataset + held-out .bin pairs")
    p.add_argument("out")
    p.add_argument("--identities", type=positive_int, required=True, help="training classes")
    p.add_argument("--images-per-identity", type=positive_int, default=24)
    p.add_argument("--long-tail", action="store_true", help="Pareto-distributed images per class")
    p.add_argument("--label-flip", type=fraction, default=0.0, help="fraction of images with a random wrong label")
    p.add_argument("--duplicate-fraction", type=below_one, default=0.0,
                   help="fraction of classes that are another class's identity")
    p.add_argument("--holdout", type=int_at_least(2), help="held-out identities for the .bin (default identities/4)")
    p.add_argument("--pairs", type=int_at_least(2), help="verification pairs (default min(600, 4·holdout))")
    p.add_argument("--bin-name", default="synthetic_val")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--workers", type=positive_int, help="processes (default: CPU count, at most 8)")
    args = parser.parse_args(argv)
    return {"inspect": check.cmd_inspect, "validate": check.cmd_validate, "build": build.cmd_build,
            "unpack": convert.cmd_unpack, "shuffle": convert.cmd_shuffle, "synth": build.cmd_synth,
            "pairs": build.cmd_pairs}[args.command](args)


if __name__ == "__main__":
    sys.exit(run_cli(main))
