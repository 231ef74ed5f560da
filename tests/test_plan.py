"""tools/plan.py and pfc_mx/capacity/: published memory tables, shard and traffic arithmetic, bad input."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pfc_mx import shard
from pfc_mx.errors import ConfigError
from pfc_mx.capacity import BACKBONES, MiB, GiB, RunSpec, fits, make_plan
from pfc_mx.cli import run_cli
from pfc_mx.cli.plan import main, parse_gpus, parse_size
from tests.ranks import rank_env

ROOT = Path(__file__).resolve().parents[1]

# arcface_torch README, "GPU Memory Utilization ... (MB per GPU) on a Tesla V100 32GB x 8 System",
# column Partial FC 0.1 (r50, fp16, 128 per GPU). 125k is the row the constants were fitted to.
ARCFACE_TORCH_PFC01_MB = {125_000: 4_868, 1_400_000: 6_056, 5_500_000: 9_854,
                          8_000_000: 12_310, 16_000_000: 19_950, 29_000_000: 32_324}
# original MXNet partial_fc README, r50, fp16, RTX 2080Ti: (classes, GPUs, batch per GPU, rate, MB)
MXNET_PARTIAL_FC_MB = [(1_000_000, 8, 128, 0.1, 8_100), (1_000_000, 8, 128, 1.0, 10_408),
                       (10_000_000, 64, 64, 0.1, 6_722), (10_000_000, 64, 32, 1.0, 9_684)]


def r50_v100(classes: int, **kw) -> RunSpec:
    return RunSpec(num_classes=classes, world=8, batch=128, sample_rate=0.1, fp16=True,
                   backbone="iresnet50", **kw)


@pytest.mark.parametrize("classes", sorted(ARCFACE_TORCH_PFC01_MB))
def test_estimate_within_25_percent_of_arcface_torch_memory_table(classes):
    published = ARCFACE_TORCH_PFC01_MB[classes]  # nvidia-smi "MB" are MiB
    estimate = make_plan(r50_v100(classes)).total_bytes / MiB
    assert abs(estimate / published - 1) <= 0.25, (classes, estimate, published)


@pytest.mark.parametrize("classes,world,batch,rate,published", MXNET_PARTIAL_FC_MB)
def test_mxnet_calibration_within_10_percent_of_mxnet_partial_fc_table(classes, world, batch, rate, published):
    spec = RunSpec(classes, world, batch, sample_rate=rate, fp16=True, backbone="iresnet50", calibration="mxnet")
    estimate = make_plan(spec).total_bytes / MiB
    assert abs(estimate / published - 1) <= 0.10, (classes, world, batch, rate, estimate, published)


def test_output_states_the_calibrated_assumptions(capsys):
    argv = "--classes 29000000 --gpus 8 --batch 128 --sample-rate 0.1 --fp16 --backbone iresnet50 --gpu-mem 32GB"
    assert main(argv.split()) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"$ python tools/plan.py {argv}")
    for text in ("backbone activations (arcface_torch calibration)", "framework overhead (arcface_torch",
                 "calibrated on: arcface_torch README", "Verdict: **fits**", "| **total** |"):
        assert text in out, text


def test_a_shard_beyond_one_mxnet_array_is_named_with_the_gpus_it_needs(capsys):
    # 4,194,303 classes × 512 fit in one array of the released wheels (2**31 - 2 elements), one more does not
    assert shard.min_world(4_194_303, 512) == 1 and shard.min_world(4_194_304, 512) == 2
    assert shard.min_world(10_000_000, 512) == 3 and shard.min_world(29_000_000, 512) == 7
    assert main("--classes 29000000 --gpus 8 --batch 128".split()) == 0
    assert "too few GPUs" not in capsys.readouterr().out
    assert main("--classes 29000000 --gpus 4 --batch 128".split()) == 0
    assert "PartialFC refuses it: use at least 7 GPUs" in capsys.readouterr().out
    assert main("--classes 29000000 --gpus 8 --batch 128 --sample-rate 1.0".split()) == 0
    assert "N × S = 3,712,000,000 elements" in capsys.readouterr().out  # 1,024 × 3,625,000


def test_largest_shard_takes_the_remainder_of_classes_not_divisible_by_world():
    # 1003 = 4 × 250 + 3: ranks 0-2 hold 251 classes, rank 3 holds 250; the plan sizes rank 0.
    assert make_plan(RunSpec(1003, 4, 2, embedding_size=8)).num_local == 251
    assert make_plan(RunSpec(1000, 4, 2, embedding_size=8)).num_local == 250
    assert make_plan(RunSpec(29_000_001, 8, 128)).num_local == 3_625_001
    assert make_plan(RunSpec(3, 8, 1)).num_local == 1  # fewer classes than ranks


def test_memory_items_equal_hand_computation():
    # C 1003, W 4, B 2 (N 8), D 8, rate 0.1: num_local 251, S = int(25.1) = 25 >= 8 positives.
    p = make_plan(RunSpec(1003, 4, 2, embedding_size=8, sample_rate=0.1, overhead_bytes=0))
    items = {i.name: i.bytes for i in p.memory}
    assert p.num_sample == 25
    assert items["class centers + momentum"] == 2 * 251 * 8 * 4
    assert items["sampled centers (S×D)"] == 25 * 8 * 4 * 4
    assert items["logits + gradient (N×S)"] == 8 * 25 * 2 * 4
    assert items["gathered embeddings (N×D) + labels"] == 8 * 8 * 3 * 4 + 2 * 8 * 8
    assert items["framework overhead"] == 0
    h = {i.name: i.bytes for i in make_plan(RunSpec(1003, 4, 2, embedding_size=8, sample_rate=0.1,
                                                    fp16=True)).memory}
    assert h["sampled centers (S×D)"] == 25 * 8 * (4 * 4 + 2)
    assert h["logits + gradient (N×S)"] == 8 * 25 * (2 * 4 + 2)


def test_sampled_count_covers_every_positive_of_the_global_batch():
    # num_local 1000, rate 0.1 → 100 < N = 256 positives in the worst case → S = 256
    assert make_plan(RunSpec(4000, 4, 64, sample_rate=0.1)).num_sample == 256
    # a shard smaller than the batch is used whole
    assert make_plan(RunSpec(100, 4, 64, sample_rate=0.1)).num_sample == 25
    assert make_plan(RunSpec(4000, 4, 64, sample_rate=1.0)).num_sample == 1000


def test_centers_on_host_leave_the_gpu_total():
    dev = make_plan(RunSpec(1_000_000, 8, 128))
    host = make_plan(RunSpec(1_000_000, 8, 128, centers_on="host"))
    assert dev.total_bytes - host.total_bytes == 2 * 125_000 * 512 * 4


def test_fp16_halves_activations_and_batch_scales_them():
    act = {}
    for fp16 in (False, True):
        for batch in (64, 128):
            items = make_plan(RunSpec(93_431, 8, batch, fp16=fp16)).memory
            act[fp16, batch] = next(i.bytes for i in items if i.name == "backbone activations")
    assert act[True, 128] == pytest.approx(act[False, 128] / 2)
    assert act[False, 128] == pytest.approx(2 * act[False, 64])


def test_communication_bytes_equal_hand_computation():
    p = make_plan(RunSpec(93_431, 8, 128, backbone="iresnet50"))
    comm = {i.name: i.bytes for i in p.comm}
    assert comm["allgather embeddings"] == 7 * 128 * 512 * 4              # (W−1) parts of B×D fp32
    assert comm["allgather labels"] == 7 * 128 * 8                        # int64
    assert comm["allreduce softmax max, sum, target"] == 2 * 7 / 8 * 3 * 1024 * 4
    assert comm["allreduce embedding gradients"] == 2 * 7 / 8 * 1024 * 512 * 4
    assert comm["allreduce backbone gradients"] == 2 * 7 / 8 * 43_590_848 * 4
    half = {i.name: i.bytes for i in make_plan(RunSpec(93_431, 8, 128, fp16=True)).comm}
    assert half["allreduce backbone gradients"] == 2 * 7 / 8 * 43_590_848 * 2
    assert make_plan(RunSpec(93_431, 1, 128)).comm_bytes == 0  # one rank talks to nobody


def _iresnet_params(units, d=512):
    """Independent recount of arcface_torch's iresnet: stem, IBasicBlocks, bn2 + fc + features."""
    total, inp = 3 * 64 * 9 + 2 * 64 + 64, 64
    for planes, n in zip((64, 128, 256, 512), units):
        for i in range(n):
            total += 2 * inp + 9 * inp * planes + 3 * planes + 9 * planes * planes + 2 * planes
            total += (inp * planes + 2 * planes) if i == 0 else 0
            inp = planes
    return total + 2 * 512 + 512 * 49 * d + d + 2 * d


def _iresnet_feature_elements(units):
    """Outputs per image of every op: input, stem conv/bn/prelu at 112², then per IBasicBlock
    bn1, conv1, bn2, prelu at the input size, conv2, bn3, (downsample conv + bn), add at the output size."""
    total, inp, size = 3 * 112 * 112 + 3 * 64 * 112 * 112, 64, 112
    for planes, n in zip((64, 128, 256, 512), units):
        for i in range(n):
            out = size // 2 if i == 0 else size
            total += (inp + 3 * planes) * size * size + (3 + 2 * (i == 0)) * planes * out * out
            inp, size = planes, out
    return total + 512 * 7 * 7 + 2 * 512


@pytest.mark.parametrize("name,units", [("iresnet18", (2, 2, 2, 2)), ("iresnet34", (3, 4, 6, 3)),
                                        ("iresnet50", (3, 4, 14, 3)), ("iresnet100", (3, 13, 30, 3)),
                                        ("iresnet200", (6, 26, 60, 6))])
def test_iresnet_tables_match_a_recount_from_the_unit_specs(name, units):
    assert BACKBONES[name].num_params(512) == _iresnet_params(units, 512)
    assert BACKBONES[name].num_params(256) == _iresnet_params(units, 256)
    assert BACKBONES[name].feature_elements == _iresnet_feature_elements(units)


def test_parameter_counts_match_insightface_published_sizes():
    assert BACKBONES["iresnet50"].params == pytest.approx(43.6e6, abs=0.05e6)
    assert BACKBONES["iresnet100"].params == pytest.approx(65.2e6, abs=0.05e6)


def test_verdict_keeps_the_headroom_free():
    assert fits(90 * GiB, 100 * GiB, 0.10)
    assert not fits(90 * GiB + 1, 100 * GiB, 0.10)
    assert fits(100 * GiB, 100 * GiB, 0.0)


def test_too_small_gpu_gets_does_not_fit(capsys):
    assert main("--classes 29000000 --sample-rate 0.1 --fp16 --gpu-mem 16GB".split()) == 0
    assert "Verdict: **does not fit** in 16.0 GiB" in capsys.readouterr().out


def test_recipe_config_supplies_the_run_and_flags_override_it(capsys):
    assert main(["--config", str(ROOT / "configs/ms1mv3_r50.yaml"), "--batch", "64"]) == 0
    out = capsys.readouterr().out
    assert "93,431 classes on 8 GPUs" in out and "64 per GPU" in out and "iresnet50" in out and "fp16" in out


def test_sizes_and_gpu_counts_parse():
    assert parse_size("32GB") == parse_size("32GiB") == parse_size("32g") == parse_size("32") == 32 * GiB
    assert parse_size("40960MB") == 40 * GiB
    assert parse_size("1000b") == 1000
    assert parse_gpus("8") == (1, 8)
    assert parse_gpus("2x8") == (2, 16)


@pytest.mark.parametrize("argv,needle", [
    ("--classes -5", "--classes must be a positive integer"),
    ("--classes 1000 --batch 0", "--batch must be a positive integer"),
    ("--classes 1000 --embedding-size -1", "--embedding-size must be a positive integer"),
    ("--classes 1000 --gpus -8", "--gpus"),
    ("--classes 1000 --gpus 2x0", "--gpus"),
    ("--classes 1000 --sample-rate 0", "--sample-rate must be in (0, 1]"),
    ("--classes 1000 --sample-rate 1.5", "--sample-rate must be in (0, 1]"),
    ("--classes 1000 --backbone resnet9000", "unknown backbone 'resnet9000'"),
    ("--classes 1000 --gpu-mem=-32GB", "memory size"),
    ("--classes 1000 --gpu-mem lots", "memory size"),
    ("--classes 1000 --headroom 1.5", "--headroom"),
    ("--classes ten", "invalid int value"),
    ("--sample-rate 0.1", "--classes is required"),
])
def test_bad_input_is_one_error_line_and_exit_2(argv, needle, capsys):
    assert run_cli(main, argv.split()) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], captured.err


def test_cli_process_exits_2_on_an_unknown_backbone():
    r = subprocess.run([sys.executable, "tools/plan.py", "--classes", "1000", "--backbone", "r50"],
                       cwd=ROOT, env=rank_env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().startswith("error: unknown backbone 'r50'") and len(r.stderr.strip().splitlines()) == 1


def test_validation_rejects_a_spec_built_in_code():
    with pytest.raises(ConfigError):
        make_plan(RunSpec(1000, 8, 128, sample_rate=0.0))
