"""Export a checkpoint or a legacy insightface model to ONNX, with a parity check.

Runs pfc_mx.cli.export_onnx (installed as the `pfc-export-onnx` command); --help shows the usage.
"""
import sys

from pfc_mx.cli import run_cli
from pfc_mx.cli.export_onnx import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
