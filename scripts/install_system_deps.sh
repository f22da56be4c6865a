#!/bin/sh
# System packages the test suite needs beyond pip: Debian's chromium renders report.html in tests/test_report_html.py.
# Idempotent: does nothing when /usr/bin/chromium exists. Installs with apt-get only when run as root (CI containers);
# otherwise prints the command to run and exits 0, and the Chromium test skips with a reason.
set -eu

PACKAGES="chromium fonts-dejavu-core fonts-liberation"  # fonts: without one, headless text renders as boxes

if [ -x /usr/bin/chromium ]; then
    echo "install_system_deps: chromium already installed ($(/usr/bin/chromium --version 2>/dev/null | head -n 1))"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install_system_deps: not root; to render report.html in the tests, install: sudo apt-get install -y $PACKAGES"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_system_deps: apt-get not found; install Chromium ($PACKAGES) with this system's package manager"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq $PACKAGES
echo "install_system_deps: installed $(/usr/bin/chromium --version 2>/dev/null | head -n 1)"
