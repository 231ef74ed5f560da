"""Accuracy on .bin verification sets.

Runs pfc_mx.cli.eval_verification (installed as the `pfc-eval-verification` command); --help shows the usage.
"""
import sys

from pfc_mx.cli import run_cli
from pfc_mx.cli.eval_verification import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
