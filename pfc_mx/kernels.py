"""Fused CPU kernels of the Partial FC head and the backbones' PReLU and BatchNorm: build, cache and load the MXNet extension library.

    from pfc_mx import kernels
    if kernels.load():            # True once mx.nd.pfc_* exist in this process
        rows, norm = mx.nd.pfc_gather_normalize(weight, index)

    python -m pfc_mx.kernels build     # what `make setup` runs: compile now, print the library path

The C++ source (pfc_mx/csrc/pfc_kernels.cc, its header comment defines the
operators) is compiled with g++ against the lib_api files that the installed
MXNet wheel ships, for this machine's CPU (-march=native), into
``${PFC_MX_CACHE:-~/.cache/pfc_mx}/kernels/``. The file name carries a hash of
everything the build depends on (source, MXNet version and lib_api files, flags,
CPU model and instruction-set flags), so a change rebuilds and a library built
for another CPU is never loaded; a cache built elsewhere for this CPU loads
without a compiler. Each kernel runs OMP_NUM_THREADS threads, else the
processors divided by the ranks on the host (HOROVOD_LOCAL_SIZE). Ranks
starting together build once: the first takes a file lock, the others wait and
load its result. Without a compiler ``load()`` returns False with the reason in
``unavailable_reason()``, and PartialFC and the backbones' PReLU (symbols.prelu)
and BatchNorm (symbols.batchnorm) fall back to stock MXNet operators (same results, slower).
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import mxnet as mx

from pfc_mx.atomic import atomic_path
from pfc_mx.cache import cache_root

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "csrc" / "pfc_kernels.cc"
# -Bsymbolic: the library's own lib_api symbols win over same-named ones that an earlier
# RTLD_GLOBAL library exports (Horovod's MXNet extension does; loading crashed without it).
# -ffp-contract=off: the update rounds as MXNet's sgd_mom_update does (bit-identical rows).
FLAGS = ["-std=c++17", "-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-fPIC", "-shared", "-Wl,-Bsymbolic"]
OPERATORS = ("pfc_gather_normalize", "pfc_margin_softmax", "pfc_softmax_loss", "pfc_softmax_scale",
             "pfc_normalize_grad", "pfc_sparse_sgd", "pfc_prelu", "pfc_batchnorm")

_state = {"loaded": False, "reason": None}


class KernelBuildError(RuntimeError):
    """The extension library could not be compiled or loaded (the message says why)."""


def cache_dir() -> Path:
    """Folder of built libraries: $PFC_MX_CACHE/kernels, else ~/.cache/pfc_mx/kernels (XDG_CACHE_HOME honoured)."""
    return cache_root() / "kernels"


def _mxnet_root() -> Path:
    return Path(mx.__file__).resolve().parent


def _compiler() -> str:
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise KernelBuildError(f"no C++ compiler ({cxx!r} not on PATH; Debian: apt-get install g++)")
    return cxx


def _cpu() -> str:
    """The CPU's model and instruction-set flags: -march=native code runs only where both match."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    keys = ("model name", "flags")
    return "\n".join(next((l for l in lines if l.startswith(k)), "") for k in keys)


def _lib_api_files() -> List[Path]:
    root = _mxnet_root()
    files = [root / "include/mxnet/lib_api.h", root / "src/lib_api.cc"]
    for needed in files:
        if not needed.is_file():
            raise KernelBuildError(f"this MXNet install lacks {needed.name} (expected at {needed})")
    return files


def library_path() -> Path:
    """Where the library for this source, MXNet, flags and CPU lives (built or not)."""
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), *(f.read_bytes() for f in _lib_api_files()), mx.__version__.encode(),
                 " ".join(FLAGS).encode(), _cpu().encode(), platform.machine().encode()):
        digest.update(hashlib.sha256(part).digest())
    return cache_dir() / f"pfc_kernels-{digest.hexdigest()[:16]}.so"


def _compile(target: Path) -> None:
    header, lib_api = _lib_api_files()
    cmd: List[str] = [_compiler(), *FLAGS, f"-I{header.parents[1]}", str(SOURCE), str(lib_api)]
    with atomic_path(target, mode=0o755) as tmp:  # the cache may be shared: umask's permissions
        log.info("compiling the Partial FC kernels (about 10 s)")
        result = subprocess.run([*cmd, "-o", str(tmp)], capture_output=True, text=True)
        if result.returncode != 0:
            tail = "\n".join(result.stderr.strip().splitlines()[-15:])
            raise KernelBuildError(f"compiling {SOURCE.name} failed ({' '.join(cmd)}):\n{tail}")


def build() -> Path:
    """Compile the library unless the cache has it; safe when several processes call it at once."""
    target = library_path()
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another rank may be compiling: wait for it
        if not target.is_file():
            _compile(target)
    return target


def load() -> bool:
    """Build (if needed) and load the kernels into MXNet once per process; False (reason kept) if impossible."""
    if _state["loaded"]:
        return True
    if _state["reason"] is not None:
        return False
    try:
        path = build()
        mx.library.load(str(path), verbose=False)
    except (KernelBuildError, OSError, mx.base.MXNetError) as exc:
        _state["reason"] = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.warning("fused Partial FC kernels unavailable, using stock MXNet operators: %s", str(exc).strip())
        return False
    missing = [name for name in OPERATORS if not hasattr(mx.nd, name)]
    if missing:
        _state["reason"] = f"the library loaded but lacks {missing}"
        return False
    _state["loaded"] = True
    return True


def unavailable_reason() -> Optional[str]:
    """Why load() returned False (None when it has not failed)."""
    return _state["reason"]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pfc_mx.kernels", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["build", "path"], help="build: compile if needed and load once; "
                        "path: print where the library for this machine lives")
    args = parser.parse_args(argv)
    try:
        if args.command == "path":
            print(library_path())
            return 0
        if not library_path().is_file():
            print("pfc_mx.kernels: compiling the fused Partial FC kernels (about 10 s)", file=sys.stderr)
        path = build()
    except (KernelBuildError, OSError) as exc:
        print(f"pfc_mx.kernels: {exc}", file=sys.stderr)
        return 1
    if not load():
        print(f"pfc_mx.kernels: built {path} but loading failed: {unavailable_reason()}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
