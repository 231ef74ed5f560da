#!/usr/bin/env bash
# Build (or reuse) the project's virtual environment in .venv.
#
#   scripts/setup.sh            CPU: mxnet==1.9.1, Horovod with MXNet + Gloo
#   PFC_MX_GPU=cu112 scripts/setup.sh
#                               GPU: mxnet-cu112==1.9.1, Horovod with NCCL
#
# Idempotent: when .venv holds a complete build of the current recipe (a stamp
# written as the very last step) it only checks the imports and returns in
# seconds. A failed step stops with a message; the stamp is then absent, so no
# later command uses the half-built environment (`make` targets re-run setup).
# The Horovod wheel, which takes ~10 minutes to compile on 2 cores, is cached
# under ${PFC_MX_CACHE:-~/.cache/pfc_mx}/wheels, keyed by everything it was
# built against, so a fresh clone on the same machine installs it in seconds.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
VENV="$ROOT/.venv"
PY=${PYTHON:-python3}
FLAVOR=${PFC_MX_GPU:-cpu}
HOROVOD_VERSION=0.28.1
MXNET_VERSION=1.9.1
CONSTRAINTS="$ROOT/constraints.txt"

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }
trap 'rc=$?; [ $rc -eq 0 ] || printf "[setup] FAILED (exit %s) at line %s; .venv is marked incomplete and will be rebuilt next time.\n" "$rc" "$LINENO" >&2' EXIT

case "$FLAVOR" in
  cpu) MXNET_PKG="mxnet==$MXNET_VERSION" ;;
  cu112) MXNET_PKG="mxnet-cu112==$MXNET_VERSION" ;;
  *) die "PFC_MX_GPU must be unset/cpu or cu112 (got '$FLAVOR')" ;;
esac

# The stamp names the recipe: any change to these files or the flavour rebuilds.
recipe_hash() {
  cat "$CONSTRAINTS" "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh" | sha256sum | cut -c1-16
}
STAMP="$VENV/.pfc_mx-ready"
WANT="$(recipe_hash)-$FLAVOR"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -x "$VENV/bin/python" ]; then
  if "$VENV/bin/python" -c "import mxnet, horovod.mxnet, pfc_mx" 2>/dev/null; then
    say ".venv is up to date ($FLAVOR)"
    exit 0
  fi
  say ".venv stamp present but imports fail: rebuilding"
fi
rm -f "$STAMP"

# ---- prerequisites -----------------------------------------------------------
missing_apt=()
command -v "$PY" >/dev/null || die "$PY not found: install Python 3.11 (Debian: apt-get install python3 python3-venv python3-dev)"
"$PY" - <<'EOF' || die "Python >= 3.8 and <= 3.11 is required (MXNet 1.9.1 wheels); set PYTHON=/path/to/python3.11"
import sys
sys.exit(0 if (3, 8) <= sys.version_info[:2] <= (3, 11) else 1)
EOF
"$PY" -c "import venv, ensurepip" 2>/dev/null || missing_apt+=(python3-venv)
inc=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
[ -f "$inc/Python.h" ] || missing_apt+=(python3-dev)
command -v g++ >/dev/null || missing_apt+=(g++)
command -v make >/dev/null || missing_apt+=(make)
cmake_ok() {
  command -v cmake >/dev/null || return 1
  local v; v=$(cmake --version | head -1 | awk '{print $3}')
  [ "$(printf '%s\n3.13\n' "$v" | sort -V | head -1)" = "3.13" ]
}
cmake_ok || missing_apt+=(cmake)
if [ ${#missing_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing prerequisites with apt-get: ${missing_apt[*]}"
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing_apt[@]}" >/dev/null \
      || die "apt-get install ${missing_apt[*]} failed"
  else
    die "missing prerequisites; run: sudo apt-get install ${missing_apt[*]}"
  fi
fi

# ---- virtual environment -----------------------------------------------------
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c pass 2>/dev/null; then
  say "creating .venv with $("$PY" --version)"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV" || die "python -m venv failed"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
export PIP_CONSTRAINT="$CONSTRAINTS"

say "installing $MXNET_PKG and Horovod's build requirements"
"${PIP[@]}" install -c "$CONSTRAINTS" "$MXNET_PKG" wheel "setuptools<70" cloudpickle psutil pyyaml packaging \
  || die "pip install of $MXNET_PKG failed"

# ---- Horovod, compiled against the installed MXNet ---------------------------
if "$VENV/bin/python" -c "import horovod.mxnet" 2>/dev/null \
   && [ "$("$VENV/bin/python" -c 'import horovod; print(horovod.__version__)')" = "$HOROVOD_VERSION" ]; then
  say "horovod $HOROVOD_VERSION already installed"
else
  pytag=$("$VENV/bin/python" -c "import sys, platform; print(f'cp{sys.version_info[0]}{sys.version_info[1]}-{platform.machine()}')")
  CACHE="${PFC_MX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pfc_mx}/wheels/horovod-$HOROVOD_VERSION-mxnet-$MXNET_VERSION-$FLAVOR-$pytag"
  wheel=$(ls "$CACHE"/horovod-*.whl 2>/dev/null | head -1 || true)
  if [ -z "$wheel" ]; then
    say "building horovod $HOROVOD_VERSION against MXNet ($FLAVOR, Gloo) - about 10 minutes on 2 cores"
    mkdir -p "$CACHE.tmp"
    export HOROVOD_WITH_MXNET=1 HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 \
           HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1
    [ "$FLAVOR" = cpu ] || export HOROVOD_GPU_OPERATIONS=NCCL
    export PATH="$VENV/bin:$PATH"
    "${PIP[@]}" wheel --no-deps --no-build-isolation --no-cache-dir -w "$CACHE.tmp" "horovod==$HOROVOD_VERSION" \
      > "$CACHE.tmp/build.log" 2>&1 \
      || { tail -30 "$CACHE.tmp/build.log" >&2; die "horovod build failed (full log: $CACHE.tmp/build.log)"; }
    rm -rf "$CACHE" && mv "$CACHE.tmp" "$CACHE"
    wheel=$(ls "$CACHE"/horovod-*.whl | head -1)
  else
    say "using cached horovod wheel $(basename "$wheel")"
  fi
  "${PIP[@]}" install --no-deps "$wheel" || die "installing $wheel failed"
  "${PIP[@]}" install -c "$CONSTRAINTS" "horovod==$HOROVOD_VERSION" || die "installing horovod's dependencies failed"
fi

# ---- the project and its runtime dependencies --------------------------------
say "installing pfc_mx (editable) and its dependencies"
"${PIP[@]}" install -c "$CONSTRAINTS" --no-build-isolation -e "$ROOT[test]" \
  || die "pip install -e . failed"

# ---- verify ------------------------------------------------------------------
check=$("$VENV/bin/horovodrun" --check-build 2>&1) || die "horovodrun --check-build failed: $check"
printf '%s\n' "$check" | sed -n '/Available Frameworks/,/Available Tensor Operations/p' | sed 's/^/[setup]   /'
printf '%s\n' "$check" | grep -q '\[X\] MXNet' || die "Horovod was built without MXNet support"
printf '%s\n' "$check" | grep -q '\[X\] Gloo' || die "Horovod was built without Gloo support"
"$VENV/bin/python" -c "import numpy, mxnet, horovod.mxnet, pfc_mx, symbols; assert numpy.__version__.startswith('1.23'), numpy.__version__" \
  || die "import check failed"
echo "$WANT" > "$STAMP"
say ".venv ready: $("$VENV/bin/python" -c 'import mxnet, numpy, horovod; print(f"mxnet {mxnet.__version__}, numpy {numpy.__version__}, horovod {horovod.__version__}")')"
