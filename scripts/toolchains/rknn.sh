#!/usr/bin/env bash
# rknn-toolkit2 (Rockchip RK3566/RK3576/RK3588 compiler + x86 simulator) in its own venv.
# Usage: rknn.sh VENV_DIR   (vdeploy toolchain install rknn passes the pins in VDEPLOY_REQUIREMENTS / VDEPLOY_NO_DEPS)
# The wheel declares torch<=2.4 (pip then pulls a 5.6 GB CUDA torch) yet imports torch even for ONNX, so the
# wheel goes in --no-deps beside torch==2.13.0 (CPU) and its other dependencies come from the pinned list.
set -euo pipefail
VENV="$1"
PY="${PYTHON:-python3}"
echo "progress: creating the venv ($("$PY" --version))"
"$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input)
echo "progress: installing the pinned dependencies (numpy 1.26, onnx 1.18, onnxruntime 1.26, opencv, scipy)"
"${PIP[@]}" install -r "$VDEPLOY_REQUIREMENTS"
echo "progress: installing rknn-toolkit2 without its declared torch pin"
"${PIP[@]}" install --no-deps -r "$VDEPLOY_NO_DEPS"
echo "progress: checking that the compiler imports"
"$VENV/bin/python" -c "from rknn.api import RKNN; RKNN(verbose=False).release()"
