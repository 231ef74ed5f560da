"""tools/bench_pfc.py at a tiny size: one fresh process per configuration, one table row each."""
from __future__ import annotations

import re

import bench_pfc  # tools/bench_pfc.py (pytest's pythonpath)


def test_tiny_benchmark_prints_one_row_per_configuration(capsys):
    assert bench_pfc.main(["--classes", "3000", "--rates", "1.0,0.1", "--worlds", "1", "--dim", "16",
                           "--batch", "8", "--steps", "1", "--seconds", "0.05"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if re.match(r"\| 1 \| 3,000 \|", line)]
    assert len(rows) == 2
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    assert [c[2] for c in cells] == ["1", "0.1"]
    assert [c[3] for c in cells] == ["3,000", "300"]  # S: every row, then max(0.1 · C, positives)
    for c in cells:
        assert float(c[4]) > 0 and float(c[5]) > 0 and float(c[6]) > 0  # head ms, matmul ms, ratio
        update, rest = float(c[11]), float(c[12])  # the update's share of the head, the rest / matmul
        assert 0 < update < float(c[4]) and 0 < rest < float(c[6])
        cpu, python, bound = float(c[13]), float(c[14]), float(c[15])  # CPU ms of the step: process, Python
        assert 0 < python <= cpu and bound > 0
        assert int(c[16]) >= 1  # timed steps: --steps, or more while they fit in --seconds


def test_bad_arguments_are_one_line_errors_before_any_run(capsys):
    from pfc_mx.cli import run_cli

    for argv, message in [(["--rates", "2"], "argument --rates: must be in (0, 1], got 2"),
                          (["--classes", "1000,0"], "argument --classes: must be >= 1, got 0"),
                          (["--seconds", "-1"], "argument --seconds: must be >= 0, got -1"),
                          (["--batch", "6", "--worlds", "4"], "--batch 6 must be divisible")]:
        assert run_cli(bench_pfc.main, argv) == 2
        assert message in capsys.readouterr().err
