#!/bin/sh
# The aarch64 TVM runtime + runner that vdeploy's tvm backend runs under qemu-user on an x86_64 host
# (backends/tvm_qemu.py): the two runtime libs from the PyPI aarch64 wheels and backends/tvm_runner/runner.cc
# cross-compiled against them.
#
#   usage: scripts/install_tvm_aarch64_runtime.sh [PYTHON]   (PYTHON: $1, else $PYTHON, else python3)
#   installs into ${VDEPLOY_TVM_AARCH64:-$HOME/.cache/vdeploy/tvm-aarch64}: runner, lib/libtvm_runtime.so,
#   lib/libtvm_ffi.so, runner.sha256 (of the runner.cc it was built from), VERSION
#
# Idempotent: does nothing when VERSION matches the apache-tvm / apache-tvm-ffi installed for PYTHON and
# runner.sha256 matches backends/tvm_runner/runner.cc.
# Needs aarch64-linux-gnu-g++ and qemu-aarch64: installed with apt-get when root, otherwise the command to run is
# printed and the script exits 0 (the tvm qemu tests then skip with that reason).
set -eu

PY=${1:-${PYTHON:-python3}}
DEST=${VDEPLOY_TVM_AARCH64:-$HOME/.cache/vdeploy/tvm-aarch64}
SRC=$(cd "$(dirname "$0")/.." && pwd)/backends/tvm_runner/runner.cc
PACKAGES="g++-aarch64-linux-gnu qemu-user"
say() { echo "install_tvm_aarch64_runtime: $*"; }

if ! TVM_VERSION=$("$PY" -c 'import importlib.metadata as m; print(m.version("apache-tvm"))' 2>/dev/null) ||
   ! FFI_VERSION=$("$PY" -c 'import importlib.metadata as m; print(m.version("apache-tvm-ffi"))' 2>/dev/null); then
    say "apache-tvm / apache-tvm-ffi are not installed for $PY; install them first (the tvm tests skip until then): $PY -m pip install -e '.[tvm]'"
    exit 0
fi
WANT="apache-tvm==$TVM_VERSION apache-tvm-ffi==$FFI_VERSION"
SRC_SHA=$(sha256sum "$SRC" | cut -d' ' -f1)

if [ -x "$DEST/runner" ] && [ "$(cat "$DEST/VERSION" 2>/dev/null)" = "$WANT" ] &&
   [ "$(cat "$DEST/runner.sha256" 2>/dev/null)" = "$SRC_SHA" ]; then
    say "up to date in $DEST ($WANT)"
    exit 0
fi

if ! command -v aarch64-linux-gnu-g++ >/dev/null 2>&1 || ! command -v qemu-aarch64 >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends $PACKAGES
    else
        say "needs aarch64-linux-gnu-g++ and qemu-aarch64; install them with: sudo apt-get install -y --no-install-recommends $PACKAGES"
        exit 0
    fi
fi

# Headers are architecture-independent: take them from the host packages.
INCLUDES=$("$PY" -c '
import os, tvm_ffi, tvm
print(os.path.join(os.path.dirname(tvm_ffi.__file__), "include"))
print(os.path.join(os.path.dirname(tvm.__file__), "include"))')

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
say "downloading aarch64 wheels ($WANT)"
# The wheels carry a Python tag but the two libs do not depend on it; 3.11 is a tag that both publish.
"$PY" -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64 --python-version 3.11 \
    -d "$WORK/wheels" "apache-tvm==$TVM_VERSION" "apache-tvm-ffi==$FFI_VERSION"

mkdir -p "$WORK/out/lib"
"$PY" - "$WORK/wheels" "$WORK/out/lib" <<'EOF'
import sys, zipfile
from pathlib import Path
wheels, lib = Path(sys.argv[1]), Path(sys.argv[2])
wanted = {"apache_tvm-": "tvm/lib/libtvm_runtime.so", "apache_tvm_ffi-": "tvm_ffi/lib/libtvm_ffi.so"}
for prefix, member in wanted.items():
    (wheel,) = [w for w in wheels.glob("*.whl") if w.name.startswith(prefix) and "aarch64" in w.name]
    (lib / Path(member).name).write_bytes(zipfile.ZipFile(wheel).read(member))
EOF

INC_FLAGS=""
for d in $INCLUDES; do [ -d "$d" ] && INC_FLAGS="$INC_FLAGS -I $d"; done
say "cross-compiling $SRC"
# shellcheck disable=SC2086
aarch64-linux-gnu-g++ -std=c++17 -O2 $INC_FLAGS "$SRC" -o "$WORK/out/runner" \
    -L "$WORK/out/lib" -ltvm_runtime -ltvm_ffi -Wl,-rpath,'$ORIGIN/lib'
echo "$SRC_SHA" > "$WORK/out/runner.sha256"
echo "$WANT" > "$WORK/out/VERSION"

# Replace the install only once everything is built, so a failed run leaves the old one intact.
# Only the files this script writes are replaced (VDEPLOY_TVM_AARCH64 may name a directory holding other things).
mkdir -p "$DEST"
rm -rf "$DEST/lib" "$DEST/runner" "$DEST/runner.sha256" "$DEST/VERSION"
mv "$WORK/out/lib" "$WORK/out/runner" "$WORK/out/runner.sha256" "$DEST/"
mv "$WORK/out/VERSION" "$DEST/VERSION"  # last: it marks the install complete
say "installed $DEST ($WANT)"
