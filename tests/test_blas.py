"""pfc_mx.blas: the OpenBLAS kernel choice, in child processes with a clean environment."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pfc_mx import blas

ROOT = Path(__file__).resolve().parents[1]
AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma bmi2\n"
SSE = "processor\t: 0\nflags\t\t: fpu sse2 sse3 ssse3\n"

# which kernels the child's OpenBLAS runs with, and what pfc_mx.blas found and did
PROBE = textwrap.dedent("""
    import json, os, sys
    if sys.argv[1] == "mxnet-first":
        import mxnet
    import pfc_mx
    from pfc_mx import blas
    import mxnet
    print(json.dumps({"loaded": blas._loaded_core(blas.bundled_library()), "detected": blas._state["detected"],
                      "env": os.environ.get("OPENBLAS_CORETYPE"), "note": blas.describe()}))
    """)


def probe(order: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", blas.DETECTED_ENV)}
    result = subprocess.run([sys.executable, "-c", PROBE, order], cwd=ROOT, env={**clean, **env},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    out["stderr"] = result.stderr
    return out


def test_kernels_without_avx2_on_an_avx2_cpu_are_a_misdetection():
    assert blas.misdetected("Prescott", AVX2) and blas.misdetected("Sandybridge", AVX2)
    assert not blas.misdetected("Haswell", AVX2) and not blas.misdetected("SkylakeX", AVX2)
    assert not blas.misdetected("Zen", AVX2)
    assert not blas.misdetected("Prescott", SSE)  # an old CPU: its kernels are right
    assert not blas.misdetected("Prescott", "")   # no cpuinfo: leave OpenBLAS alone


needs_bundled = pytest.mark.skipif(blas.bundled_library() is None, reason="this MXNet ships no libopenblas.so.0")


@needs_bundled
def test_importing_pfc_mx_first_gives_avx2_kernels_exactly_when_openblas_would_misjudge_the_cpu():
    out = probe("pfc_mx-first")
    if blas.misdetected(out["detected"], blas._cpuinfo()):
        assert out["env"] == out["loaded"] == "Haswell", out
        assert "would use its" in out["note"]
    else:  # a CPU this OpenBLAS knows: untouched
        assert out["env"] is None and out["loaded"] == out["detected"], out


@needs_bundled
def test_a_coretype_set_by_the_user_stands():
    out = probe("pfc_mx-first", OPENBLAS_CORETYPE="Sandybridge")
    assert out["loaded"] == "Sandybridge" and out["detected"] is None
    assert out["note"] == "OPENBLAS_CORETYPE=Sandybridge (from the environment)"


@needs_bundled
def test_a_child_process_takes_the_answer_from_its_parent_instead_of_asking_again():
    out = probe("pfc_mx-first", **{blas.DETECTED_ENV: "Haswell"})  # whatever this CPU gets: not asked
    assert out["detected"] == "Haswell" and out["env"] is None, out


@needs_bundled
def test_mxnet_imported_first_is_left_alone_with_a_warning_when_misjudged():
    out = probe("mxnet-first")
    assert out["env"] is None and out["loaded"] == out["detected"]
    if blas.misdetected(out["detected"], blas._cpuinfo()):
        assert "Set OPENBLAS_CORETYPE=Haswell before starting Python" in out["stderr"]
