"""Export our checkpoint or a legacy insightface MXNet model to ONNX, with an onnxruntime parity check.

    python tools/export_onnx.py runs/demo                      # -> <checkpoint>/backbone.onnx
    python tools/export_onnx.py runs/demo/checkpoints/latest model.onnx --fp16
    python tools/export_onnx.py old/model,0 r100.onnx          # legacy prefix,epoch

The model takes raw RGB (N, 3, 112, 112) float32 and returns (N, D) embeddings; its first nodes
are the Sub/Mul normalisation insightface's ArcFaceONNX looks for. Exit 2 on a user error or a
failed parity check (cosine < 0.99999, or < 0.999 with --fp16).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from pfc_mx.cli import ArgumentParser, positive_int, run_cli
from pfc_mx.evaluation.model_loader import resolve_checkpoint
from pfc_mx.export import export_onnx


def main(argv: Optional[List[str]] = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="run dir, checkpoints dir, checkpoint dir, `latest` file, or prefix,epoch")
    parser.add_argument("output", nargs="?", help="the .onnx file (default: beside the checkpoint)")
    parser.add_argument("--fp16", action="store_true", help="float16 weights and activations (input/output float32)")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    parser.add_argument("--batch-check", type=positive_int, default=4, help="random images in the parity check")
    args = parser.parse_args(argv)
    output = args.output
    if output is None:
        prefix, epoch = resolve_checkpoint(args.source)
        tail = "" if Path(prefix).name == "backbone" else f"-{epoch:04d}"
        output = f"{prefix}{tail}{'-fp16' if args.fp16 else ''}.onnx"
    report = export_onnx(args.source, output, fp16=args.fp16, check=not args.no_check, batch_check=args.batch_check)
    print(f"exported   {report['source']} -> {report['path']} ({report['bytes'] / 2**20:.1f} MiB)")
    print(f"graph      opset {report['opset']}, input {report['input']}, output {report['output']}, "
          f"{'float16' if report['fp16'] else 'float32'}")
    if "min_cosine" in report:
        print(f"parity     {report['parity_batch']} random images: max |mxnet - onnxruntime| "
              f"{report['max_abs_diff']:.3g}, min cosine {report['min_cosine']:.8f} "
              f"(required >= {report['min_cosine_required']})")
    else:
        print("parity     skipped (--no-check)")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
