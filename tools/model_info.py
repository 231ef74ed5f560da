"""Parameter count and FLOPs of the backbones at 112x112.

Runs pfc_mx.cli.model_info (installed as the `pfc-model-info` command); --help shows the usage.
"""
import sys

from pfc_mx.cli import run_cli
from pfc_mx.cli.model_info import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
