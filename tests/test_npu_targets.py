"""NPU hand-off targets and analytic estimates: legal ONNX proven in ORT, device numbers never faked."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

# ethos-u55 is now an INT8 target compiled by Vela: tests/test_arm_targets.py


def test_hailo_builds_a_plain_bn_cnn(cli, saved_pt2, tmp_path):
    """Relu, Add, Conv, Gemm are in the profile Hailo's documents support; the mean over H, W is unknown, not
    unsupported, so the hand-off is written and the verdict stays unverified."""
    result = cli("build", saved_pt2("cnn"), "--target", "hailo-8", "--out", tmp_path, "--json")
    assert result.exit_code == 0, result.stderr
    coverage = result.json["coverage"]
    assert coverage["unsupported"] == [] and coverage["unknown"] == ["ReduceMean"]
    assert {coverage["status"][op] for op in ("Conv", "Relu", "Add", "Gemm")} == {"native"}
    assert result.json["verdict"] == "unverified" and (tmp_path / "cnn-hailo-8" / "HANDOFF.txt").is_file()


def test_hailo_refuses_what_its_documents_exclude(cli, tmp_path):
    """An op neither supported nor left open by the profile (TopK) is unsupported: exit 1, nothing written."""
    from onnx import TensorProto, helper, numpy_helper

    k = numpy_helper.from_array(np.array([2], np.int64), "k")
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("TopK", ["r", "k"], ["v", "i"])]
    graph = helper.make_graph(
        nodes,
        "topk",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, 2])],
        [k],
    )
    path = tmp_path / "topk.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), str(path))
    result = cli("build", path, "--target", "hailo-8", "--out", tmp_path / "out", "--json")
    assert result.exit_code == 1 and "target hailo-8 cannot run op(s) TopK" in result.stderr
    assert not (tmp_path / "out").exists()


CATALOG = """
op_profiles:
  cpu: {source: "onnxruntime 1.31.1 kernel registry (subset for this test)", ops: [Conv, Relu, Add, Gemm, MatMul,
        ReduceMean, GlobalAveragePool, Flatten, Reshape, Constant, BatchNormalization]}
targets:
  dev-board:
    description: "a board known only by its data sheet"
    backend: npu
    op_profile: cpu
    allow_estimates: ALLOW
    precisions: [fp32]
    budgets: {latency_ms: 50, power_w: POWER}
    tolerances: {fp32: {max_rel_err: 1.0e-4, min_cosine: 0.9999}}
    hardware: {peak_gops: {fp32: 100}, mem_bw_gbs: 10, idle_w: 1.0, active_w: 4.0, source: "test figures"}
"""


@pytest.mark.parametrize(
    "allow, power_budget, verdict, code",
    [
        ("false", 5, "unverified", 0),  # an estimate never passes a budget silently
        ("true", 5, "pass", 0),
        ("true", 0.5, "fail", 3),  # below the board's idle power: the estimate must violate it
    ],
)
def test_power_budget_from_an_estimate(cli, saved_pt2, tmp_path, allow, power_budget, verdict, code):
    catalog = tmp_path / "targets.yaml"
    catalog.write_text(CATALOG.replace("ALLOW", allow).replace("POWER", str(power_budget)))
    result = cli(
        "build",
        saved_pt2("cnn"),
        "--target",
        "dev-board",
        "--out",
        tmp_path / "out",
        "--json",
        "--targets-file",
        catalog,
    )
    assert result.exit_code == code, result.stderr
    manifest = result.json
    assert manifest["verdict"] == verdict
    power, latency = manifest["measured"]["power_w"], manifest["measured"]["latency_ms"]
    assert power["source"] == "estimate" and 1.0 <= power["mean"] <= 4.0
    assert latency["source"] == "estimate" and latency["runs"] == 0 and latency["p50"] > 0
    assert manifest["estimate"]["model"] == "roofline"
    if allow == "false":
        assert any(u.startswith("power_w: only estimated") for u in manifest["reason"]["unverified"])


def test_estimate_is_calibrated_where_latency_is_measured(cli, saved_pt2, tmp_path):
    catalog = tmp_path / "targets.yaml"
    catalog.write_text(
        CATALOG.replace("ALLOW", "false").replace("POWER", "5").replace("backend: npu", "backend: onnxruntime")
    )
    result = cli(
        "build",
        saved_pt2("cnn"),
        "--target",
        "dev-board",
        "--out",
        tmp_path / "out",
        "--json",
        "--iters",
        5,
        "--targets-file",
        catalog,
    )
    manifest = result.json
    calibration = manifest["measured"]["estimate_calibration"]
    measured = manifest["measured"]["latency_ms"]["p50"]
    assert calibration["measured_p50_ms"] == measured  # the real measurement, not the estimate
    assert 0 < calibration["efficiency"] <= 1
    estimated = manifest["estimate"]["latency_ms"]
    assert calibration["error_pct"] == pytest.approx(
        100 * (estimated - calibration["measured_p50_ms"]) / calibration["measured_p50_ms"], rel=5e-3, abs=0.1
    )
