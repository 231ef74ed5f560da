"""tools/bench_backbone.py at a tiny size: one fresh process per configuration, one table row each."""
from __future__ import annotations

import argparse
import re

import mxnet as mx

import bench_backbone  # tools/bench_backbone.py (pytest's pythonpath)
from pfc_mx.step_memory import kept_for_backward


def test_tiny_benchmark_compares_both_prelu_kernels_in_one_table(capsys):
    assert bench_backbone.main(["--backbone", "iresnet_tiny", "--batch", "2", "--threads", "1", "--steps", "1",
                                "--prelu", "stock,fused", "--bn", "stock,fused", "--dim", "8"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if re.match(r"\| iresnet_tiny \| 2 \| 1 \|", line)]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    assert [(c[3], c[4]) for c in cells] == [("stock", "stock"), ("fused", "stock"), ("stock", "fused"),
                                             ("fused", "fused")]
    assert float(cells[0][8]) == 1.0  # base / this: the first row is its own reference
    cells = [c[:4] + c[5:] for c in cells]  # the columns after the BatchNorm kernel, as below
    for c in cells:
        step, floor, ratio = float(c[4]), float(c[5]), float(c[6])
        assert step > 0 and floor > 0 and ratio > 0  # (two decimals each: the ratio is not recomputable)
        profiled, families = float(c[9]), [float(v) for v in c[10:12] + c[13:15] + c[16:19]]
        assert profiled > 0 and all(v >= 0 for v in families) and sum(families) > 0
        assert float(c[12]) > 0  # the profiled step over its convolutions
        assert 0 <= float(c[15]) <= 100  # PReLU's share of the profiled step, in %
        peak, after_imports, params = float(c[19]), float(c[20]), float(c[21])
        assert peak >= after_imports > 0 and params >= 0 and int(c[22]) == 1
        assert c[23] == "default" and all(float(v) >= 0 for v in c[24:29])  # the peak's parts (MiB)
        assert float(c[26]) >= float(c[27]) > 0  # the forward's storage holds the activations the backward reads


def test_the_peak_is_its_measured_parts_and_the_momentum_is_measured_as_its_size(tmp_path):
    args = argparse.Namespace(steps=1, dim=16)
    r = bench_backbone.launch("mobilefacenet", 2, 1, "fused", args, tmp_path, "trim", bn="fused")
    mib = 1 << 20
    parts = {p: r[f"{p}_bytes"] for p in bench_backbone.MEMORY}
    assert r["malloc"] == "trim" and all(v > 0 for v in parts.values()), parts
    assert r["params_bytes"] > r["grads_bytes"] > 4 * mib  # BatchNorm's running statistics have no gradient
    # the update's storage, read from MXNet's memory profiler, is the momentum: one array per gradient
    assert abs(r["momentum_bytes"] - r["grads_bytes"]) <= 0.05 * r["grads_bytes"]
    assert r["forward_bytes"] >= r["kept_bytes"] > 0
    # the parts add up to the measured peak: the rest (oneDNN, glibc, the shape pass) is small
    rest = bench_backbone.rest_bytes(r)
    assert -16 * mib <= rest <= 0.25 * r["peak_bytes"], (rest / mib, r["peak_bytes"] / mib)
    assert "rest" in bench_backbone.line(r)


def test_family_names_cover_both_kernels_and_the_optimizer():
    seconds = bench_backbone.families({"Convolution": 1000.0, "_backward_pfc_prelu": 500.0, "LeakyReLU": 250.0,
                                       "multi_sgd_mom_update": 125.0, "elemwise_add": 100.0})
    assert seconds["conv_fwd"] == 1.0 and seconds["prelu_bwd"] == 0.5 and seconds["prelu_fwd"] == 0.25
    assert seconds["optimizer"] == 0.125 and seconds["other"] == 0.1 and seconds["batchnorm"] == 0.0
    seconds = bench_backbone.families({"pfc_batchnorm": 300.0, "_backward_pfc_batchnorm": 200.0, "BatchNorm": 100.0})
    assert seconds["batchnorm"] == 0.6


def test_bad_arguments_are_one_line_errors_before_any_run(capsys):
    from pfc_mx.cli import run_cli

    for argv, message in [(["--prelu", "stock,fast"], "argument --prelu: must be among stock, fused, got 'fast'"),
                          (["--backbone", "resnet9"], "--backbone: unknown ['resnet9']"),
                          (["--batch", "32,0"], "argument --batch: must be >= 1, got 0"),
                          (["--malloc", "tcmalloc"], "argument --malloc: must be among default, trim"),
                          (["--bn", "fast"], "argument --bn: must be among stock, fused")]:
        assert run_cli(bench_backbone.main, argv) == 2
        assert message in capsys.readouterr().err


def test_kept_activations_count_a_view_and_what_it_views_once():
    data = mx.sym.var("data")
    fc = mx.sym.FullyConnected(data, num_hidden=6, no_bias=True, name="fc")  # (5, 6) float32: 120 bytes

    def kept(other):  # the backward of fc * other reads fc's output and other
        return kept_for_backward(mx.sym.sum(mx.sym.elemwise_mul(fc, other)), (5, 4))

    square = kept(fc)
    assert square >= 120
    assert kept(mx.sym.reshape(fc, shape=(-2,), name="view")) == square       # a view: the same array
    assert kept(mx.sym.identity(fc, name="copy")) == square + 120              # a copy: its own array
