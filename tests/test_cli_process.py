"""The real console script in a child process: lazy imports, one-line errors on the real stderr."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

VDEPLOY = str(Path(sys.executable).with_name("vdeploy"))
HEAVY = ("torch", "onnx", "onnxruntime", "openvino", "onnxscript", "onnx_ir", "numpy")


def test_cli_import_is_light():
    """`vdeploy --help` must stay fast: importing the CLI pulls in no ML runtime (timed in benchmarks/)."""
    code = f"import sys, vdeploy.cli; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_lists_commands():
    out = subprocess.run([VDEPLOY, "--help"], capture_output=True, text=True, check=True).stdout
    assert "build" in out and "targets" in out


def test_real_stderr_is_one_line(tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"\x80\x04K\x01.")  # a pickle of the int 1: tensors only, no model
    proc = subprocess.run(
        [VDEPLOY, "build", str(path), "--target", "x86-cpu", "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    error_lines = [line for line in proc.stderr.splitlines() if not line.startswith("vdeploy: ")]
    assert error_lines == [line for line in error_lines if line.startswith("model: ")] and len(error_lines) == 1
    assert not (tmp_path / "out").exists()


def test_targets_json():
    import json

    out = subprocess.run([VDEPLOY, "targets", "--json"], capture_output=True, text=True, check=True).stdout
    names = {row["name"] for row in json.loads(out)}
    assert {"x86-cpu", "onnxruntime-cpu"} <= names


def test_targets_json_lists_ops_and_capabilities():
    import json

    out = subprocess.run([VDEPLOY, "targets", "--json"], capture_output=True, text=True, check=True).stdout
    rows = {row["name"]: row for row in json.loads(out)}
    ort, rk = rows["onnxruntime-cpu"], rows["rk3588-npu"]
    assert "CastLike" in ort["ops"] and "com.microsoft::MultiHeadAttention" in ort["ops"]
    assert ort["capabilities"] == ["MatMulRank4"] and rk["capabilities"] == []
    assert ort["op_count"] == len(ort["ops"]) and "Gelu" not in rk["ops"]
    assert "Relu" in rows["hailo-8"]["ops"] and "LayerNormalization" in rows["hailo-8"]["unknown_ops"]
