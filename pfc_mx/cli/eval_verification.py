"""Accuracy on `.bin` verification sets (insightface's 10-fold protocol, flip-averaged embeddings).

    python tools/eval_verification.py runs/demo data/lfw.bin data/cfp_fp.bin
    python tools/eval_verification.py old/model,0 data/          # every *.bin in the folder
    python tools/eval_verification.py model.onnx data/agedb_30.bin --no-flip

The model is our run/checkpoint (see tools/export_onnx.py), a legacy prefix,epoch, or an ONNX
file. Prints one table: set, pairs, accuracy ± std over the folds, mean threshold (squared L2
distance of unit embeddings).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import List, Optional

from pfc_mx.cli import ArgumentParser, positive_int, run_cli
from pfc_mx.data.verification_bin import find_bins
from pfc_mx.evaluation.model_loader import load_embedder
from pfc_mx.evaluation.verification import verify


def bin_files(paths: List[str]) -> List[Path]:
    """The .bin files named, folders expanded to their *.bin; DatasetError if one is missing."""
    return find_bins(paths)


def main(argv: Optional[List[str]] = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="run/checkpoint dir, `latest` file, prefix,epoch or .onnx")
    parser.add_argument("bins", nargs="+", help=".bin files or folders holding them")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--no-flip", action="store_true", help="embed the image only, not also its mirror")
    args = parser.parse_args(argv)
    files = bin_files(args.bins)
    forward = load_embedder(args.model)
    print(f"model {args.model}, flip {'off' if args.no_flip else 'on'}")
    print(f"{'set':<20} {'pairs':>7} {'accuracy':>10} {'± std':>9} {'threshold':>10} {'time':>7}")
    for path in files:
        t = time.time()
        r = verify(forward, path, batch_size=args.batch_size, flip=not args.no_flip)
        print(f"{r['name']:<20} {r['pairs']:>7d} {100 * r['accuracy']:>9.2f}% {100 * r['std']:>8.2f}% "
              f"{r['threshold']:>10.3f} {time.time() - t:>6.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
