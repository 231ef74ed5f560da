"""MobileFaceNet never meets MXNet 1.9.1's oneDNN BatchNorm crash; each case runs in a fresh process.

The crash (SIGSEGV in MKLDNNBatchNormForwardImpl, found on an AVX-512 Xeon): oneDNN BatchNorm
primitives are cached by shape and eps but not by memory layout, and a 2-D (N, C) input is run
as (N, C, 1, 1). After a BatchNorm on a convolution's (N, C, 1, 1) output (oneDNN's blocked
layout), a BatchNorm on any 2-D (N, C) tensor with the same eps reuses that primitive and the
process dies. In MobileFaceNet that is the GDC conv (7×7 depthwise to 1×1) + BatchNorm followed
by fc1 (BatchNorm on (N, 512)) when D = 512. REPRO with flatten=False dies here ("Segmentation
fault: 11", exit code 134 from MXNet's handler); running the GDC BatchNorm on the flattened
(N, C) tensor (the same arithmetic), as symbols/mobilefacenet.py does, does not.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

REPRO = """
import mxnet as mx, numpy as np
def bn(x):
    c = x.shape[1]
    return mx.nd.BatchNorm(x, mx.nd.ones(c), mx.nd.zeros(c), mx.nd.zeros(c), mx.nd.ones(c), fix_gamma=False, eps=2e-5)
x = mx.nd.array(np.random.RandomState(0).uniform(size=(1, 512, 7, 7)))
w = mx.nd.array(np.random.RandomState(1).uniform(size=(512, 1, 7, 7)))
y = mx.nd.Convolution(x, w, num_filter=512, kernel=(7, 7), num_group=512, no_bias=True)   # (1, 512, 1, 1)
y = bn(mx.nd.flatten(y)) if {flatten} else mx.nd.flatten(bn(y))
z = bn(mx.nd.array(np.random.RandomState(2).uniform(size=(1, 512))))                      # like fc1
want = (x.asnumpy() * w.asnumpy().reshape(1, 512, 7, 7)).sum(axis=(2, 3)) / np.sqrt(1 + 2e-5)
assert np.allclose(y.asnumpy(), want, rtol=1e-4), "wrong GDC output"
print("ok", z.shape)
"""

FORWARD_BACKWARD = """
import sys; sys.path.insert(0, {root!r})
import pfc_mx, mxnet as mx
from mxnet import autograd
import symbols
net = symbols.get_model({name!r}, embedding_size={dim})
net.initialize(mx.init.Xavier())
if {hybrid}:
    net.hybridize(static_alloc=True, static_shape=True)
x = mx.nd.random.uniform(0, 255, shape=(2, 3, 112, 112))
for _ in range(2):
    with autograd.record():
        y = net(x)
    y.backward()
print("ok", net(x[:1]).asnumpy().shape)
"""


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_gdc_batch_norm_on_flattened_output_runs_and_is_exact():
    result = run(REPRO.format(flatten=True))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ok (1, 512)" in result.stdout


@pytest.mark.parametrize("name, dim, hybrid", [
    ("mobilefacenet", 512, False),
    ("mobilefacenet", 512, True),
    ("mobilefacenet_mxnet", 512, False),
    ("mobilefacenet_mxnet", 128, True),
])
def test_mobilefacenet_forward_backward_in_a_fresh_process(name, dim, hybrid):
    result = run(FORWARD_BACKWARD.format(root=str(ROOT), name=name, dim=dim, hybrid=hybrid))
    assert result.returncode == 0, f"rc {result.returncode}: {result.stderr[-2000:]}"
    assert f"ok (1, {dim})" in result.stdout
