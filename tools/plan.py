"""Plan a large Partial FC run: memory per GPU, traffic, whether it fits.

Runs pfc_mx.cli.plan (installed as the `pfc-plan` command); --help shows the usage.
"""
import sys

from pfc_mx.cli import run_cli
from pfc_mx.cli.plan import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
