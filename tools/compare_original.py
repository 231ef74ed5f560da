"""Compare N whole training steps with insightface's original MXNet partial_fc (docs/REPRODUCE.md §5).

Runs pfc_mx.cli.compare_original; --help shows the usage.
"""
import sys

from pfc_mx.cli import run_cli
from pfc_mx.cli.compare_original import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
