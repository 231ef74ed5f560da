"""Face RecordIO datasets: inspect, validate, build, unpack, shuffle, synth, pairs.

Runs pfc_mx.cli.rec (installed as the `pfc-rec` command); --help shows the usage.
"""
import sys

from pfc_mx.cli import run_cli
from pfc_mx.cli.rec import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
