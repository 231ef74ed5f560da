"""compare_original --seeds without insightface's code: the lr schedule against MXNet's
MultiFactorScheduler, the statistics and verdict over seeds against a reference written here with
Python's `statistics`, and the options' errors (one line, exit code 2)."""
from __future__ import annotations

import math
import statistics
import subprocess
import sys

import mxnet as mx
import pytest

from pfc_mx.cli.compare_original import main
from pfc_mx.cli.compare_seeds import SE_FACTOR, compare_sides, final_loss, mean_sd, step_lr, table, verdict
from pfc_mx.errors import ConfigError
from tests.ranks import ROOT, rank_env


@pytest.mark.parametrize("milestones", [[], [3], [4, 9], [1, 2, 7]])
def test_the_lr_of_each_step_is_mxnets_multifactor_schedulers(milestones):
    base = 0.1
    scheduler = mx.lr_scheduler.MultiFactorScheduler(step=milestones or [10 ** 6], factor=0.1, base_lr=base)
    for step in range(12):    # MXNet's optimizer counts its updates from 1
        assert step_lr(base, milestones, step) == pytest.approx(scheduler(step + 1), rel=1e-12)
    assert step_lr(base, [4, 9], 3) == base and step_lr(base, [4, 9], 4) == pytest.approx(base / 10)


def test_mean_and_sample_sd_match_pythons_statistics():
    values = [3.25, 2.5, 4.0, 2.75]
    mean, sd = mean_sd(values)
    assert mean == pytest.approx(statistics.mean(values)) and sd == pytest.approx(statistics.stdev(values))
    assert mean_sd([7.0]) == (7.0, 0.0)


def _reference(original, ours):
    n = len(original)
    diff = statistics.mean(ours) - statistics.mean(original)
    se = math.sqrt((statistics.variance(original) + statistics.variance(ours)) / n)
    return diff, se


def test_the_difference_of_means_is_held_to_its_standard_error_over_seeds():
    original, ours = [2.0, 2.4, 2.2], [2.3, 2.1, 2.6]
    m = compare_sides(original, ours)
    diff, se = _reference(original, ours)
    assert m["diff"] == pytest.approx(diff) and m["se"] == pytest.approx(se)
    assert m["sd_o"] == pytest.approx(statistics.stdev(original))
    assert m["mean_u"] == pytest.approx(statistics.mean(ours))
    assert m["within"] is (abs(diff) <= SE_FACTOR * se) is True
    shifted = [v + 3 * SE_FACTOR * se for v in original]   # far beyond the seeds' spread
    assert compare_sides(original, shifted)["within"] is False
    assert compare_sides([1.0, 1.0], [1.0, 1.0])["within"] is True     # no spread, no difference
    assert compare_sides([1.0, 1.0], [1.5, 1.5])["within"] is False     # no spread, a difference


def test_the_sides_need_the_same_two_or_more_seeds():
    with pytest.raises(ValueError):
        compare_sides([1.0], [1.0])
    with pytest.raises(ValueError):
        compare_sides([1.0, 2.0], [1.0, 2.0, 3.0])


def test_the_final_loss_is_the_mean_of_the_last_steps():
    assert final_loss([9.0, 4.0, 2.0, 3.0], 2) == 2.5 and final_loss([9.0, 3.0], 5) == 6.0


def test_the_verdict_and_table_say_which_measure_differs():
    same = compare_sides([0.9, 0.8, 0.85], [0.88, 0.83, 0.86])
    off = compare_sides([2.0, 2.1, 2.05], [3.0, 3.1, 3.05])
    assert verdict(same, same).startswith("**same within seed noise**")
    assert verdict(off, same).startswith("**differs** in final loss (")
    assert verdict(same, off).startswith("**differs** in accuracy (")
    rows = [{"seed": s, "loss_o": 2.0, "loss_u": 3.0, "acc_o": 0.9, "acc_u": 0.88, "equal": s, "steps": 40,
             "seconds": 10.0} for s in (0, 1, 2)]
    lines = table(rows, off, same, 10).splitlines()
    assert len(lines) == 2 + 3 + 1 and lines[-1].startswith("| mean ± sd | 2.0500 ± 0.0500 | 3.0500 ± 0.0500 |")
    assert lines[4] == "| 2 | 2.0000 | 3.0000 | 0.9000 | 0.8800 | 2 of 40 | 10 |"


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0"], "--seeds needs two or more different seeds, got 0"),
    (["--seeds", "1,1"], "--seeds needs two or more different seeds, got 1,1"),
    (["--seeds", "0,1", "--milestones", "5,3"], "--milestones must increase, got 5,3"),
    (["--seeds", "0,1", "--steps", "10", "--milestones", "4,10"],
     "--milestones 10 is not below --steps 10 (it would never lower the lr)"),
    (["--seeds", "0,1", "--steps", "10", "--last", "11"], "--last 11 is more than --steps 10"),
    (["--milestones", "3"], "--milestones belong to --seeds (final loss and accuracy over seeds)"),
    (["--last", "3", "--ours-init", "xavier"],
     "--last, --ours-init belong to --seeds (final loss and accuracy over seeds)"),
])
def test_options_the_seeds_mode_cannot_use_are_one_line_errors_before_the_checkout_is_read(tmp_path, argv, message):
    with pytest.raises(ConfigError) as e:
        main(["--insightface", str(tmp_path)] + argv)   # tmp_path has no insightface code: checked later
    assert str(e.value) == message


def test_a_bad_seed_list_stops_the_tool_with_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "compare_original.py"), "--insightface", str(tmp_path),
                           "--seeds", "0,x"], capture_output=True, text=True, env=rank_env(), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: argument --seeds: expected an integer, got 'x' (see compare_original --help)"]
