"""Low-precision builds end to end: FP16 islands, BF16 behind a CPU probe, calibrated INT8, with the record kept."""

from __future__ import annotations

import numpy as np
import onnx
import pytest


def build(cli, model, tmp_path, target, precision, *extra):
    return cli(
        "build", model, "--target", target, "--precision", precision, "--out", tmp_path, "--iters", 5, "--json", *extra
    )


def test_fp16_on_onnxruntime_is_strongly_typed_with_fp32_islands(cli, saved_pt2, tmp_path):
    result = build(cli, saved_pt2("vit"), tmp_path, "onnxruntime-cpu", "fp16")
    assert result.exit_code == 0, result.stderr
    manifest = result.json
    assert manifest["verdict"] == "pass" and manifest["precision"] == "fp16"
    assert manifest["precision_info"]["casts"] > 0 and manifest["precision_info"]["fp32_nodes"] > 0
    model = onnx.load(str(tmp_path / "vit-onnxruntime-cpu" / "model.onnx"))
    dtypes = {t.data_type for t in model.graph.initializer if len(t.dims) > 1}
    assert onnx.TensorProto.FLOAT16 in dtypes
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    layer_norm_inputs = [n.input[0] for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert layer_norm_inputs and all(types.get(name) == onnx.TensorProto.FLOAT for name in layer_norm_inputs)


def test_bf16_on_x86_records_the_cpu_probe(cli, saved_pt2, tmp_path):
    result = build(cli, saved_pt2("vit"), tmp_path, "x86-cpu", "bf16")
    assert result.exit_code == 0, result.stderr
    manifest = result.json
    probe = manifest["precision_info"]["bf16_probe"]
    assert probe["ok"] and probe["attempts"]
    assert manifest["artifact"]["options"]["INFERENCE_PRECISION_HINT"] == "bf16"
    assert 0 < manifest["numerics"]["rel_err"] <= manifest["budgets"]["numerics"]["max_rel_err"]


@pytest.mark.parametrize("target", ["x86-cpu", "onnxruntime-cpu"])
def test_int8_with_calibration_file(cli, saved_pt2, tmp_path, target):
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(3).standard_normal((16, 3, 32, 32)).astype(np.float32))
    result = build(cli, saved_pt2("vit"), tmp_path / "out", target, "int8", "--calib", calib)
    assert result.exit_code == 0, result.stderr
    manifest = result.json
    info = manifest["precision_info"]
    assert info["calibration"]["source"].startswith("npy:") and info["calibration"]["samples"] == 16
    assert info["placement"]["kind"] == "transformer-aware" and "calibration" not in manifest["reason"]
    fp32 = build(cli, saved_pt2("vit"), tmp_path / "fp32", target, "fp32").json
    assert manifest["size_mb"] < fp32["size_mb"]  # INT8 weights really are in the artifact


def test_int8_without_calibration_warns_loudly(cli, saved_pt2, tmp_path):
    result = cli(
        "build", saved_pt2("cnn"), "--target", "onnxruntime-cpu", "--precision", "int8", "--out", tmp_path, "--iters", 3
    )
    assert result.exit_code == 0, result.stderr
    assert "warning" in result.stdout and "random" in result.stdout


def test_int8_sensitive_layers_are_measured_and_kept_float(cli, saved_pt2, tmp_path):
    result = build(cli, saved_pt2("vit"), tmp_path, "onnxruntime-cpu", "int8", "--int8-sensitive", "1")
    assert result.exit_code == 0, result.stderr
    info = result.json["precision_info"]
    kept = info["fallback"]["float_layers"]  # --int8-sensitive N: the N most sensitive, measured (issue 14 schema)
    assert len(kept) == 1 and kept[0] in info["placement"]["keep_float_nodes"] and info["float_layers"] == kept
    assert info["fallback"]["ranking"]["layers_measured"] > 1  # every quantized layer was measured


def test_bad_calibration_path_is_a_clear_error(cli, saved_pt2, tmp_path):
    out = tmp_path / "out"
    result = build(cli, saved_pt2("cnn"), out, "onnxruntime-cpu", "int8", "--calib", tmp_path / "nothing.bin")
    assert result.exit_code == 1 and "calibration path" in result.stderr and not out.exists()


def test_gate_override_fails_the_build(cli, saved_pt2, tmp_path):
    result = build(cli, saved_pt2("cnn"), tmp_path, "onnxruntime-cpu", "int8", "--min-cosine", "0.9999999")
    assert result.exit_code == 3
    assert "min_cosine" in {v["budget"] for v in result.json["violations"]}
