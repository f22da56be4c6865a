#!/usr/bin/env bash
# The Arm toolchain venv: Vela (Ethos-U), litert-torch + ai-edge-quantizer + LiteRT (PyTorch -> INT8 TFLite, host
# interpreter) and ExecuTorch (XNNPACK .pte, x86 runtime; Arm Ethos-U backend + tosa-tools for the comparison route).
# Usage: scripts/toolchains/arm.sh VENV_DIR   (vdeploy toolchain install arm calls it with the pins of
# backends/toolchains.py in $VDEPLOY_REQUIREMENTS; by hand it uses the same pins below).
# One venv: the pins resolve together (numpy 2.1, protobuf 7); torch==2.13.0 is the local CPU wheel (ENVIRONMENT.md).
set -euo pipefail
VENV="${1:?usage: arm.sh VENV_DIR}"
PY="${PYTHON:-python3}"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
if [ -n "${VDEPLOY_REQUIREMENTS:-}" ]; then
  "$VENV/bin/python" -m pip install --quiet -r "$VDEPLOY_REQUIREMENTS"
else
  "$VENV/bin/python" -m pip install --quiet torch==2.13.0 ethos-u-vela==5.2.0 litert-torch==0.10.0 \
    ai-edge-quantizer==0.10.0 ai-edge-litert==2.3.0 executorch==1.5.1 tosa-tools==2026.8.0
fi
"$VENV/bin/python" -c "import ethosu.vela, litert_torch, ai_edge_quantizer, ai_edge_litert, executorch.runtime"
