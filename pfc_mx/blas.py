"""Choose OpenBLAS kernels that fit this CPU before MXNet loads its OpenBLAS.

    import pfc_mx          # runs select_core() once, before anything imports mxnet
    import mxnet as mx     # its OpenBLAS now uses AVX2 kernels on CPUs it does not know

The mxnet 1.9.1 wheels bundle OpenBLAS 0.3.13 built with DYNAMIC_ARCH: at load
time it picks its kernels from a table of CPU models. CPUs newer than that
table (Sapphire Rapids, for one) get its oldest x86-64 kernels ("Prescott",
SSE3), and every matrix product MXNet sends to BLAS (``dot``, ``linalg.gemm2``:
all of the Partial FC head's) runs about 2.6× slower than with its AVX2
("Haswell") kernels on the same CPU. OpenBLAS reads OPENBLAS_CORETYPE once,
when it is loaded, so the choice must be made before ``import mxnet``:

- OPENBLAS_CORETYPE already set (to anything): nothing is done, the user's
  choice stands.
- Otherwise the bundled library is asked in a child process (~0.05 s) which
  kernels it would use; the answer goes into PFC_MX_OPENBLAS_DETECTED, so the
  processes this one starts (horovodrun's ranks, loader workers) do not ask
  again. Kernels without AVX2 on a CPU with AVX2 and FMA: this process's
  environment gets OPENBLAS_CORETYPE=Haswell, which those processes inherit.
- mxnet already imported: the loaded library is asked instead, and a warning
  says how to set the variable.

MXNet builds without the bundled libopenblas.so.0 (MKL, a system BLAS) are left
alone. ``describe()`` says what was found and done (the benchmark tools print it).
"""
from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional

log = logging.getLogger(__name__)

FALLBACK_CORE = "Haswell"  # AVX2 + FMA kernels: run on every CPU that has both
# OpenBLAS core names whose kernels use AVX2 (0.3.13 and later releases)
AVX2_CORES = frozenset({"haswell", "skylakex", "cooperlake", "sapphirerapids", "zen", "excavator"})
DETECTED_ENV = "PFC_MX_OPENBLAS_DETECTED"  # the bundled OpenBLAS's own choice, passed to child processes
_QUERY = ("import ctypes, sys; lib = ctypes.CDLL(sys.argv[1]); lib.openblas_get_corename.restype = ctypes.c_char_p; "
          "print(lib.openblas_get_corename().decode())")

_state: Dict[str, Optional[str]] = {"detected": None, "note": None}


def bundled_library() -> Optional[Path]:
    """The libopenblas.so.0 that the installed mxnet wheel ships, found without importing mxnet."""
    spec = importlib.util.find_spec("mxnet")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "libopenblas.so.0"
        if path.is_file():
            return path
    return None


def cpu_has_avx2_fma(cpuinfo: str) -> bool:
    """True when /proc/cpuinfo text lists both avx2 and fma in its flags."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[-1].split())
            return {"avx2", "fma"} <= flags
    return False


def misdetected(core: str, cpuinfo: str) -> bool:
    """OpenBLAS chose kernels without AVX2 although the CPU has AVX2 and FMA."""
    return core.lower() not in AVX2_CORES and cpu_has_avx2_fma(cpuinfo)


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _loaded_core(library: Path) -> str:
    lib = ctypes.CDLL(str(library))  # already loaded by mxnet: the same handle
    lib.openblas_get_corename.restype = ctypes.c_char_p
    return lib.openblas_get_corename().decode()


def select_core() -> None:
    """Set OPENBLAS_CORETYPE for this process and its children when OpenBLAS would misjudge the CPU."""
    if _state["note"] is not None:
        return
    if os.environ.get("OPENBLAS_CORETYPE"):
        _state["note"] = f"OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} (from the environment)"
        return
    library = bundled_library()
    if library is None or sys.platform != "linux":
        _state["note"] = "no bundled OpenBLAS: left alone"
        return
    try:
        if "mxnet" in sys.modules:
            core = _loaded_core(library)
        else:
            core = os.environ.get(DETECTED_ENV) or subprocess.run(
                [sys.executable, "-c", _QUERY, str(library)], capture_output=True, text=True, timeout=60,
                check=True).stdout.strip()
    except (OSError, AttributeError, subprocess.SubprocessError) as exc:
        _state["note"] = f"could not ask OpenBLAS for its kernels: {exc}"
        return
    _state["detected"] = os.environ[DETECTED_ENV] = core
    if not misdetected(core, _cpuinfo()):
        _state["note"] = f"OpenBLAS kernels: {core}"
        return
    if "mxnet" in sys.modules:
        _state["note"] = f"OpenBLAS kernels: {core} on an AVX2 CPU (mxnet was imported first)"
        log.warning("OpenBLAS uses its %s kernels on this AVX2 CPU: matrix products run ~2.6x slower. Set "
                    "OPENBLAS_CORETYPE=%s before starting Python, or import pfc_mx before mxnet.", core, FALLBACK_CORE)
        return
    os.environ["OPENBLAS_CORETYPE"] = FALLBACK_CORE
    _state["note"] = f"OPENBLAS_CORETYPE={FALLBACK_CORE} (OpenBLAS would use its {core} kernels on this AVX2 CPU)"


def describe() -> str:
    """One line: which OpenBLAS kernels this process uses and why."""
    return _state["note"] or "OpenBLAS kernels not checked"
