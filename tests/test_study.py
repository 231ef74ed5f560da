"""tools/study.py and its studies (study_training, study_cost) at tiny scale: aggregation, tables, fits, one arm."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pfc_mx.cli import run_cli
from pfc_mx.errors import TrainingError
from pfc_mx.capacity import GiB

import study  # tools/study*.py (pytest's pythonpath)
import study_common
import study_cost
import study_training

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY_TRAINING = ["--identities", "12", "--images", "4", "--holdout", "6", "--pairs", "20", "--batch", "8",
                 "--steps", "3", "--jobs", "1"]


def runs(values: dict) -> list:
    return [{"condition": c, "arm": a, "seed": s, "accuracy": v}
            for (c, a), vs in values.items() for s, v in enumerate(vs)]


def table_rows(markdown: str) -> list:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def test_aggregate_gives_numpy_mean_and_sample_std_per_condition_and_arm_in_order():
    values = {("noisy", "full softmax (rate 1.0)"): [0.81, 0.84, 0.79], ("noisy", "PFC 0.1"): [0.9, 0.7, 0.75],
              ("clean", "PFC 0.1"): [0.6]}
    got = study_training.aggregate(runs(values))
    assert [(g["condition"], g["arm"]) for g in got] == list(values)
    for g, v in zip(got, values.values()):
        assert g["n"] == len(v) and g["values"] == v
        np.testing.assert_allclose(g["mean"], np.mean(v), rtol=1e-12)
        np.testing.assert_allclose(g["std"], np.std(v, ddof=1) if len(v) > 1 else 0.0, rtol=1e-12)


def test_accuracy_table_shows_mean_std_seeds_and_difference_to_first_arm():
    record = {"runs": runs({("clean", "full softmax (rate 1.0)"): [0.80, 0.82, 0.84],
                            ("clean", "PFC 0.1"): [0.79, 0.80, 0.81]})}
    rows = table_rows(study_training.accuracy_table(record))
    assert rows[0] == ["clean", "full softmax (rate 1.0)", "3", "82.00 ± 2.00", "", "80.00 82.00 84.00"]
    assert rows[1] == ["clean", "PFC 0.1", "3", "80.00 ± 1.00", "-2.00", "79.00 80.00 81.00"]


def test_markdown_table_right_aligns_numeric_columns_only():
    text = study_common.markdown_table(["name", "value", "note"], [["a", "1,234", "x"], ["b", "-5.5 ± 1", "y"]])
    lines = text.splitlines()
    assert lines[0] == "| name | value | note |"
    assert lines[1] == "|---|---:|---|"
    assert lines[3] == "| b | -5.5 ± 1 | y |"


def test_predicted_head_bytes_counts_centers_momentum_and_working_set():
    # rate 1: S = C; rate 0.1: S = max(int(0.1 · C), N)
    assert study_cost.predicted_head_bytes(1000, 1.0, 16, 8) == 4 * (2 * 1000 * 16 + 2 * (1000 * 16 + 8 * 1000))
    assert study_cost.predicted_head_bytes(1000, 0.1, 16, 8) == 4 * (2 * 1000 * 16 + 2 * (100 * 16 + 8 * 100))
    assert study_cost.predicted_head_bytes(1000, 0.01, 16, 64) == 4 * (2 * 1000 * 16 + 2 * (64 * 16 + 64 * 64))


def test_published_table_is_read_as_the_fc_layers_added_time_per_sample():
    rows = table_rows(study_cost.published_fc_cost())
    assert [r[0] for r in rows] == [f"{c:,}" for c in sorted(study_cost.ARCFACE_TORCH)]
    assert rows[0][3:] == ["0.0", "0.0", "–"]
    # 4M: 1e6/1748 − 1e6/4824 µs (model parallel) against 1e6/4208 − 1e6/5004 µs (PFC 0.1)
    mp, pfc = 1e6 / 1748 - 1e6 / 4824, 1e6 / 4208 - 1e6 / 5004
    assert rows[-1][3:] == [f"{mp:.1f}", f"{pfc:.1f}", f"{mp / pfc:.1f}×"]


def test_missing_numbers_keep_a_numeric_column_right_aligned():
    text = study_common.markdown_table(["C", "ms", "gone"], [["1,000", "12", "–"], ["2,000", "does not fit", "–"]])
    assert text.splitlines()[1] == "|---:|---:|---|"


def test_fit_verdict_keeps_headroom_free():
    assert study_cost.fit_verdict(9 * GiB, 10 * GiB, 0.1) == (True, "fits in 9.0 GiB")
    ok, words = study_cost.fit_verdict(9 * GiB + 1, 10 * GiB, 0.1)
    assert not ok and words == "does not fit in 9.0 GiB (needs 9.0 GiB)"
    ok, words = study_cost.fit_verdict(int(20.5 * GiB), 16 * GiB, 0.1)
    assert not ok and words == "does not fit in 14.4 GiB (needs 20.5 GiB)"


def test_cost_study_records_configurations_that_do_not_fit_without_running_them(tmp_path):
    assert study.main(["cost", "--classes", "4000000", "--rates", "1.0,0.1", "--memory-limit", "1GiB",
                       "--out", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "cost.json").read_text())
    assert [(r["rate"], r["fits"]) for r in record["rows"]] == [(1.0, False), (0.1, False)]
    assert all("head_s" not in r for r in record["rows"])
    assert record["rows"][1]["predicted_bytes"] == study_cost.predicted_head_bytes(4_000_000, 0.1, 512, 256)
    text = (tmp_path / "cost.md").read_text()
    assert "does not fit in 0.9 GiB (needs 38.1 GiB)" in text and "does not fit in 0.9 GiB (needs 17.5 GiB)" in text
    assert (tmp_path / "cost.png").read_bytes()[:8] == PNG_MAGIC


def test_cost_study_measures_a_tiny_head_and_compares_rates(tmp_path):
    assert study.main(["cost", "--classes", "2000", "--rates", "0.1,1.0", "--dim", "16", "--batch", "8",
                       "--steps", "1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "cost.json").read_text())["rows"]
    assert [(r["rate"], r["sampled"], r["fits"]) for r in rows] == [(1.0, 2000, True), (0.1, 200, True)]
    assert all(r["head_s"] > 0 and r["growth_bytes"] >= 0 for r in rows)
    side = table_rows((tmp_path / "cost.md").read_text().split("\n\n")[2])
    assert side[0][0] == "2,000" and side[0][3].endswith("×")


def test_tiny_rate_study_trains_one_arm_and_writes_table_json_and_png(tmp_path, capsys):
    args = ["rate", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"), "--seeds", "0",
            "--rates", "0.5", *TINY_TRAINING]
    assert study.main(args) == 0
    record = json.loads((tmp_path / "out" / "rate.json").read_text())
    assert len(record["runs"]) == 1
    run = record["runs"][0]
    assert (run["condition"], run["arm"], run["seed"], run["steps"]) == ("clean", "PFC 0.5", 0, 3)
    assert 0.0 <= run["accuracy"] <= 1.0 and np.isfinite(run["final_loss"])
    rows = table_rows((tmp_path / "out" / "rate.md").read_text())
    assert rows == [["clean", "PFC 0.5", "1", f"{100 * run['accuracy']:.2f} ± 0.00", "", f"{100 * run['accuracy']:.2f}"]]
    png = (tmp_path / "out" / "rate.png").read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 5000
    assert "[1/1] rate: clean / PFC 0.5 / seed 0: accuracy" in capsys.readouterr().err
    # a second call finds the finished run and does not train again
    assert study.main(args) == 0
    assert "(reused)" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "rate.json").read_text())["runs"][0]["accuracy"] == run["accuracy"]


def test_report_regenerates_tables_from_json_and_needs_one(tmp_path, capsys):
    record = {"study": "noise", "command": "python tools/study.py noise", "wall_seconds": 61,
              "runs": runs({("40% label flips", "full softmax (rate 1.0)"): [0.7, 0.72],
                            ("40% label flips", "PFC 0.1"): [0.74, 0.78]})}
    (tmp_path / "noise.json").write_text(json.dumps(record))
    assert study.main(["report", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "noise.md").read_text()
    assert "wall time 1:01" in text and "| 40% label flips | PFC 0.1 | 2 | 76.00 ± 2.83 | +5.00 |" in text
    assert (tmp_path / "noise.png").read_bytes()[:8] == PNG_MAGIC
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli(study.main, ["report", "--out", str(empty)]) == 2
    assert capsys.readouterr().err.startswith("error: no study JSON")


@pytest.mark.parametrize("argv,message", [
    (["rate", "--jobs", "0"], "argument --jobs: must be >= 1, got 0"),
    (["rate", "--rates", "1.0,1.5"], "argument --rates: must be in (0, 1], got 1.5"),
    (["rate", "--seeds", ","], "argument --seeds: expected comma-separated values, got ','"),
    (["rate", "--seeds", "0,-1"], "argument --seeds: must be >= 0, got -1"),
    (["rate", "--holdout", "1"], "argument --holdout: must be >= 2, got 1"),
    (["noise", "--threshold", "1"], "argument --threshold: must be in [0, 1), got 1"),
    (["noise", "--label-flip", "nan"], "argument --label-flip: must be in [0, 1], got nan"),
    (["cost", "--rates", "0"], "argument --rates: must be in (0, 1], got 0"),
    (["cost", "--classes", "10,x"], "argument --classes: expected an integer, got 'x'"),
    (["cost", "--headroom", "-0.1"], "argument --headroom: must be in [0, 1), got -0.1"),
])
def test_bad_options_give_one_line_and_exit_2(argv, message, capsys, tmp_path):
    """The shared argument types of pfc_mx.cli check every count, rate and fraction."""
    assert run_cli(study.main, argv + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}") and "Traceback" not in err, err


def test_training_without_summary_line_is_a_training_error():
    assert study_training.parse_summary('x\nsummary: {"steps": 3}\n') == {"steps": 3}
    with pytest.raises(TrainingError):
        study_training.parse_summary("step 1/3 loss 20.0\n")
