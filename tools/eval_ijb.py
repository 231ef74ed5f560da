"""IJB-B / IJB-C 1:1 verification.

Runs pfc_mx.cli.eval_ijb (installed as the `pfc-eval-ijb` command); --help shows the usage.
"""
import sys

from pfc_mx.cli import run_cli
from pfc_mx.cli.eval_ijb import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
