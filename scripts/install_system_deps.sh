#!/bin/sh
# System packages beyond pip, each for a part of the test suite:
#   chromium + fonts   renders report.html in tests/test_report_html.py
#   gcc/g++-aarch64-linux-gnu, qemu-user   link TVM aarch64 .so files (arm-cortex-a76) and run them under emulation
# Idempotent: installs only what is missing. Installs with apt-get only when run as root (CI containers);
# otherwise prints the command to run and exits 0, and the tests that need the missing tools skip with a reason.
set -eu

MISSING=""
need() {  # need COMMAND PACKAGES...
    command -v "$1" >/dev/null 2>&1 || { shift; MISSING="$MISSING $*"; }
}
need chromium chromium fonts-dejavu-core fonts-liberation  # fonts: without one, headless text renders as boxes
need aarch64-linux-gnu-gcc gcc-aarch64-linux-gnu
need aarch64-linux-gnu-g++ g++-aarch64-linux-gnu
need qemu-aarch64 qemu-user

if [ -z "$MISSING" ]; then
    echo "install_system_deps: chromium, aarch64 cross compilers and qemu-user already installed"
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install_system_deps: cannot install here (needs root and apt-get); install:$MISSING"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends $MISSING
echo "install_system_deps: installed$MISSING"
