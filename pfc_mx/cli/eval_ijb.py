"""IJB-B / IJB-C 1:1 verification: TAR at FAR 1e-6 … 1e-1 and a ROC plot.

    python tools/eval_ijb.py runs/demo data/IJBC --out runs/demo/ijb
    python tools/eval_ijb.py model.onnx data/IJBB --target IJBB --batch-size 256

ROOT holds meta/ and loose_crop/ (docs/design.md, "IJB-B/C folders"). The model is our run/checkpoint, a legacy
prefix,epoch or an ONNX file. Writes <target>_scores.npy, <target>_roc.png and <target>_tar.json
into --out (default: ./ijb_<target>).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

from pfc_mx.cli import ArgumentParser, positive_int, run_cli
from pfc_mx.evaluation.ijb import evaluate_ijb, find_target
from pfc_mx.evaluation.model_loader import load_embedder


def main(argv: Optional[List[str]] = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="run/checkpoint dir, `latest` file, prefix,epoch or .onnx")
    parser.add_argument("root", help="IJB folder with meta/ and loose_crop/")
    parser.add_argument("--target", choices=["IJBB", "IJBC"], help="default: from the meta file names")
    parser.add_argument("--out", help="output folder (default ./ijb_<target>)")
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--workers", type=positive_int, default=4, help="threads reading and aligning images")
    parser.add_argument("--no-flip", action="store_true", help="embed the image only, not also its mirror")
    parser.add_argument("--no-detector-score", action="store_true", help="do not weight images by detector score")
    parser.add_argument("--image-norm", action="store_true",
                        help="normalise image features before pooling (drops the norm as a quality weight)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    target = args.target or find_target(args.root)
    out = Path(args.out or f"ijb_{target.lower()}")
    forward = load_embedder(args.model)
    r = evaluate_ijb(forward, args.root, target, batch_size=args.batch_size, flip=not args.no_flip,
                     detector_score=not args.no_detector_score, image_norm=args.image_norm, out_dir=out,
                     workers=args.workers, progress=not args.quiet)
    tar = {f"{far:g}": value for far, value in r["tar"].items()}
    (out / f"{target.lower()}_tar.json").write_text(json.dumps(
        {"model": args.model, "target": target, "tar": tar, "auc": r["auc"], "images": r["images"],
         "templates": r["templates"], "pairs": r["pairs"]}, indent=1) + "\n")
    print(f"{target}: {r['images']} images, {r['templates']} templates, {r['pairs']} pairs; model {args.model}")
    print("FAR  " + " ".join(f"{far:>8}" for far in tar))
    print("TAR  " + " ".join(f"{100 * v:>7.2f}%" for v in tar.values()))
    print(f"AUC {100 * r['auc']:.2f}%; ROC {r['roc_png']}, scores {r['scores_npy']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
