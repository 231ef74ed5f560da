"""tools/compare_original.py without insightface's code: a checkout without the MXNet partial_fc
stops with one line and exit code 2; the table's measures (update groups, ulps, verdicts)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from pfc_mx.cli.compare_original import LIMITS, _ulps, compare, group, original_name, verdict
from pfc_mx.cli.original_pfc import find_code
from pfc_mx.errors import ConfigError
from tests.ranks import ROOT, rank_env


def test_a_folder_without_the_mxnet_partial_fc_stops_with_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "compare_original.py"), "--insightface", str(tmp_path)],
                          capture_output=True, text=True, env=rank_env(), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: --insightface {tmp_path}: no recognition/partial_fc/mxnet/memory_module.py there (an insightface "
        "checkout with the MXNet partial_fc release, e.g. commit 7fadd420)"]


def test_the_checkout_or_its_partial_fc_folder_is_found(tmp_path):
    code = tmp_path / "recognition" / "partial_fc" / "mxnet"
    (code / "symbol").mkdir(parents=True)
    with pytest.raises(ConfigError):
        find_code(str(tmp_path))
    (code / "memory_module.py").write_text("")
    (code / "symbol" / "resnet.py").write_text("")
    assert find_code(str(tmp_path)) == code.resolve() and find_code(str(code)) == code.resolve()


def test_our_names_map_to_the_originals_and_fall_in_groups():
    assert original_name("stage1_unit1_relu1_alpha") == "stage1_unit1_relu1_gamma"
    assert original_name("bn0_running_var") == "bn0_moving_var"
    assert [group(n) for n in ("conv0_weight", "pre_fc1_weight", "bn0_gamma", "bn0_beta", "relu0_alpha",
                               "bn0_running_mean", "stage4_unit1_conv1sc_weight")] == \
        ["conv", "fc", "bn gamma", "bn beta", "prelu", "bn stats", "conv"]


def test_ulps_count_float32_steps():
    a = np.array([1.0, 0.5, -3.0, 1e-9], np.float32)
    b = a.copy()
    assert _ulps(a, b) == 0
    b[0] = np.nextafter(b[0], np.float32(2))
    b[2] = np.nextafter(np.nextafter(b[2], np.float32(0)), np.float32(0))
    b[3] = 0
    assert _ulps(a, b) == 2.0   # two float32 steps below 3.0, the largest; the others are less


def test_verdicts_hold_each_row_to_the_limits_or_the_originals_own_noise():
    row = {"step": 1, "worst": ("conv0_weight", 2e-5, 1.0), "loss_o": 3.0, "loss_u": 3.0, "loss_rel": 0.0,
           "centers": 1e-6, "conv": 2e-5, "fc": 0.0, "bn gamma": 0.0, "bn beta": 0.0, "prelu": 0.0, "bn stats": 0.0,
           "bits": False}
    quiet = [{**row, "conv": 1e-6}]
    assert verdict([row], True, quiet).startswith("**same step**")
    assert "backbone 0.0002 > 0.0001" in verdict([row, {**row, "conv": 2e-4}], True, quiet)
    assert "centers 2e-05 > 1e-05" in verdict([{**row, "centers": 2 * LIMITS["centers"]}], True, quiet)
    # a measure beyond its limit passes within 3× the original's own noise at step 1, not beyond
    noisy = [{**row, "bn beta": 1e-4}]
    assert verdict([{**row, "bn beta": 2.9e-4}], True, noisy).startswith("**same step**")
    assert "backbone 0.00031 > 0.0003" in verdict([{**row, "bn beta": 3.1e-4}], True, noisy)
    assert verdict([{**row, "loss_rel": 1e-3}], False, [{**row, "loss_rel": 5e-4}]).endswith(
        "after step 1 0.001, the original against itself 0.0005")
    # bit for bit only when every array of every step and every loss are equal
    equal = {**row, "bits": True}
    for same_state in (True, False):
        assert verdict([equal, equal], same_state, quiet).startswith("**bit for bit** in all 2 steps")
        assert not verdict([equal, {**row, "bits": True, "loss_u": 3.0000002}], same_state, quiet).startswith("**bit")
        assert not verdict([equal, row], same_state, quiet).startswith("**bit")


def _state(conv, centers, stats=0.5):
    """A side's state after a step as compare() reads it (our names; the original's differ only for statistics)."""
    return {"params": {"conv0_weight": np.float32(conv) * np.ones(3, np.float32), "bn0_running_mean": np.array(
                [stats], np.float32)}, "momentum": {"conv0_weight": np.float32(conv) * np.ones(3, np.float32)},
            "centers": np.float32(centers) * np.ones((2, 2), np.float32),
            "centers_momentum": np.float32(centers) * np.ones((2, 2), np.float32)}


def test_compare_calls_steps_bit_for_bit_only_when_every_array_is_equal():
    def original(state):
        return {**state, "params": {("bn0_moving_mean" if k == "bn0_running_mean" else k): v
                                    for k, v in state["params"].items()}}
    before = _state(0.0, 0.0, 0.0)
    after = _state(0.1, 0.2)
    assert compare(original(before), original(after), before, after)[0]["bits"]
    ulp = np.nextafter(np.float32(0.2), np.float32(1))
    for other in (_state(0.1, ulp), _state(0.1, 0.2, np.nextafter(np.float32(0.5), np.float32(1)))):
        measures = compare(original(before), original(after), before, other)[0]
        assert not measures["bits"] and measures["conv"] == 0.0  # a center or statistic one float32 step apart


def test_every_iresnet_name_maps_to_the_original_and_back():
    import symbols
    from pfc_mx.cli.original_pfc import _our_name
    names = list(symbols.get_model("iresnet_tiny").collect_params().keys())
    assert len(names) > 40 and all(_our_name(original_name(n)) == n for n in names)
    assert "stage1_unit1_relu1_gamma" in {original_name(n) for n in names}


def test_a_checkout_whose_code_cannot_be_imported_stops_with_one_line(tmp_path):
    from pfc_mx.cli.original_pfc import OriginalPFC
    code = tmp_path / "recognition" / "partial_fc" / "mxnet"
    (code / "symbol").mkdir(parents=True)
    (code / "memory_module.py").write_text("")
    (code / "symbol" / "resnet.py").write_text("")
    (code / "default.py").write_text("import a_module_nobody_has\n")
    with pytest.raises(ConfigError, match=r"its partial_fc code cannot be imported here \(No module named "
                                          r"'a_module_nobody_has'\)"):
        OriginalPFC(str(tmp_path), 18, 30, 32, 0.001)
