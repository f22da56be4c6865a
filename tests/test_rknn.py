"""rk3588-npu on Rockchip's own compiler (rknn-toolkit2 2.5.0 in its venv): nothing here is mocked.

golden ViT / MobileViT hybrid / BN CNN --vdeploy build fp16|int8--> model.rknn; the simulator's outputs judged against
PyTorch with the target's gates; the compiler's per-layer NPU/CPU placement in the manifest; a model with ops the NPU
lacks (Sin, TopK) shows them on the CPU in the compiler's table, and our op table is checked against it.
Needs `vdeploy toolchain install rknn` (make toolchains / make test install it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from vdeploy.backends import toolchains

pytestmark = pytest.mark.skipif(
    not toolchains.installed("rknn"), reason="the rknn toolchain is not installed: run `vdeploy toolchain install rknn`"
)

GOLDEN = ("vit", "mobilevit", "cnn")
TARGET = "rk3588-npu"
PROBE = Path(__file__).resolve().parents[1] / "docs" / "rknn_op_probe.json"  # scripts/probe_rknn_ops.py's record


class SinTopK(nn.Module):
    """Conv -> Sin -> MaxPool -> Linear -> TopK: two ops the RK3588 NPU does not run."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8 * 16 * 16, 10)

    def forward(self, x):
        y = nn.functional.max_pool2d(torch.sin(self.conv(x)), 2).flatten(1)
        return torch.topk(self.fc(y), 3).values


def _build(model, precision, out):
    from typer.testing import CliRunner

    from vdeploy.cli import app

    run = CliRunner().invoke(
        app,
        ["build", str(model), "--target", TARGET, "--precision", precision, "--out", str(out), "--json"],
        catch_exceptions=False,
    )
    return run.exit_code, run.stdout, run.stderr


@pytest.fixture(scope="module")
def rknn_builds(saved_pt2, tmp_path_factory):
    results = {}
    for precision in ("fp16", "int8"):
        out = tmp_path_factory.mktemp(f"rknn-{precision}")
        for name in GOLDEN:
            results[name, precision] = (*_build(saved_pt2(name), precision, out), out / f"{name}-{TARGET}")
    return results


@pytest.fixture(scope="module")
def sin_run(tmp_path_factory):
    """The SinTopK build, run from an empty working folder with a relative --out: (manifest, that folder's names)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("rknn-sin")
    path = folder / "sin_topk.pt2"
    torch.export.save(torch.export.export(SinTopK().eval(), (torch.randn(1, 3, 32, 32),)), str(path))
    (cwd := folder / "cwd").mkdir()
    before = os.getcwd()
    os.chdir(cwd)
    try:
        code, stdout, stderr = _build(path, "fp16", Path("out"))
    finally:
        os.chdir(before)
    assert code in (0, 3), stderr
    return json.loads(stdout), sorted(p.name for p in cwd.iterdir())


@pytest.fixture(scope="module")
def sin_build(sin_run):
    return sin_run[0]


def test_the_compiler_leaves_nothing_in_the_users_working_folder(sin_run):
    """rknn-toolkit2 writes check*.onnx into its working folder: the worker runs in a scratch one."""
    assert sin_run[1] == ["out"]


@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize("name", GOLDEN)
def test_golden_model_builds_rknn_and_simulator_numerics_hold(rknn_builds, name, precision):
    code, stdout, stderr, bundle = rknn_builds[name, precision]
    assert code == 0, stderr
    manifest = json.loads(stdout)
    assert manifest["backend"] == "rknn" and manifest["precision"] == precision
    assert manifest["export"]["opset"] <= 19
    for f in ("model.rknn", "model.onnx", "rknn_build.log", "run_rknn.py", "HANDOFF.txt", "reference_io.npz"):
        assert (bundle / f).stat().st_size > 0, f
    details = manifest["artifact"]["details"]
    assert details["rknn"]["target_platform"] == "rk3588"
    numerics, gate = manifest["numerics"], manifest["budgets"]["numerics"]
    assert numerics["outputs_from"].startswith("rknn-toolkit2 simulator")
    assert numerics["cosine"] >= gate["min_cosine"] and numerics["rel_err"] <= gate["max_rel_err"], numerics
    estimate = details["estimate"]
    assert estimate["source"] == "rknn-estimate" and estimate["cycles"] > 0
    assert estimate["latency_ms"] == pytest.approx(estimate["cycles"] / 1e6)  # 1000 MHz from targets.yaml
    assert manifest["measured"]["latency_ms"]["source"] == "rknn-estimate"
    assert manifest["verdict"] == "unverified" and not manifest["violations"]  # an estimate never passes alone


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_vit_placement_reports_the_compilers_npu_share(rknn_builds, precision):
    code, stdout, stderr, bundle = rknn_builds["vit", precision]
    assert code == 0, stderr
    placement = json.loads(stdout)["artifact"]["details"]["placement"]
    counts = placement["counts"]
    assert counts["NPU"] + counts["CPU"] == len(placement["layers"]) > 10
    assert placement["npu_share_pct"] == pytest.approx(100.0 * counts["NPU"] / len(placement["layers"]), abs=0.1)
    assert placement["npu_share_pct"] > 80  # conv/attention/LayerNorm/GELU all on the NPU (measured: 34 of 35)
    # the layers come from the compiler's own table in the build log, tied to our ONNX nodes
    log = (bundle / "rknn_build.log").read_text()
    assert all(layer["name"] in log for layer in placement["layers"])
    assert {"Conv", "LayerNormalization"} <= set(placement["onnx_ops"])


def test_ops_the_npu_lacks_are_on_the_cpu_in_both_tables(sin_build):
    placement = sin_build["artifact"]["details"]["placement"]
    cpu_ops = {f["onnx_op"] for f in placement["fallen_back"]}
    assert {"Sin", "TopK"} <= cpu_ops, placement["fallen_back"]
    assert placement["onnx_ops"]["Conv"] == {"NPU": 1, "CPU": 0}
    status = sin_build["coverage"]["status"]
    assert status["Sin"] == status["TopK"] == "fallback" and status["Conv"] == "native"  # our table agrees


# Where rknn-toolkit2 2.5.0 puts a Reshape depends on its shapes, which an op-level table cannot say: in the golden
# MobileViT, 2 of 6 Reshapes (the unfold/fold ones that move the batch axis, [128,4,2,2] <-> [1,32,16,4]) ran on the
# CPU and 4 on the NPU (measured). The manifest's placement and the console's "compiler placement" line name them.
SHAPE_DEPENDENT = {"Reshape"}


def _native_but_cpu(manifest) -> set[str]:
    status = manifest["coverage"]["status"]
    return {
        f["onnx_op"]
        for f in manifest["artifact"]["details"]["placement"]["fallen_back"]
        if f["onnx_op"] and status.get(f["onnx_op"]) == "native" and f["onnx_op"] not in SHAPE_DEPENDENT
    }


@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize("name", GOLDEN)
def test_our_table_never_says_native_where_the_compiler_used_the_cpu(rknn_builds, name, precision):
    code, stdout, stderr, _ = rknn_builds[name, precision]
    assert code == 0, stderr
    assert not _native_but_cpu(json.loads(stdout))


def test_sin_profile_agrees_with_the_compiler(sin_build):
    assert not _native_but_cpu(sin_build)


# Native although the one-op probe saw the CPU: Erf (exact GELU becomes exGelu on the NPU) and the layout ops whose
# placement depends on their shapes (targets.yaml says why). Not probed: no one-node ONNX test case to feed.
PATTERN_NATIVE = {"Erf", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}
NOT_PROBED = {"And", "Cast", "Constant", "ConstantOfShape", "Equal", "EyeLike", "GlobalMaxPool", "If", "MaxRoiPool"}


def test_rk3588_profile_is_the_compilers_own_placement():
    """targets.yaml's rk3588-npu ops == the ops rknn-toolkit2 2.5.0 put on the NPU in the recorded probe (plus the
    named exceptions): an op the compiler ran on the CPU, or refused, is never "native" in our table."""
    from vdeploy.targets import load_catalog

    record = json.loads(PROBE.read_text())
    assert record["versions"]["rknn-toolkit2"] == "2.5.0" and record["platform"] == "rk3588"
    ours = {op.op_type for op in load_catalog().get(TARGET).op_set if op.domain == ""}
    npu = {r["op"] for r in record["results"] if r["verdict"] == "NPU"}
    elsewhere = {r["op"] for r in record["results"] if r["verdict"] in ("CPU", "refused")}
    assert ours - npu == PATTERN_NATIVE | NOT_PROBED, sorted(ours - npu)
    assert npu <= ours, sorted(npu - ours)
    assert not (ours & elsewhere) - PATTERN_NATIVE
    assert NOT_PROBED <= set(record["untested"])


def test_placement_maps_compiler_layers_to_onnx_nodes():
    from vdeploy.backends.rknn import onnx_node_for

    nodes = {"node_linear": "Gemm", "node_linear_8": "Gemm", "node_sin": "Sin"}
    assert onnx_node_for("Conv:node_linear_8#2", nodes) == "node_linear_8"
    assert onnx_node_for("Conv:node_linear#2", nodes) == "node_linear"
    assert onnx_node_for("Sin:node_sin", nodes) == "node_sin"
    assert onnx_node_for("Reshape:linear_8_mm_tp_rs", nodes) is None  # a layout op the compiler inserted


def _outlier_cnn() -> torch.nn.Module:
    """The golden BN CNN with one INT8 trap: stem channel 0 scaled x1000 (a huge activation outlier that no later
    layer reads). Per-tensor INT8 of the stem output then crushes channels 1-15 to a few levels, so the first layer
    reading them (layers[0].conv1, fused with its ReLU) is where the error explodes."""
    from tests.models.cnn import build_cnn

    model = build_cnn(seed=0)
    with torch.no_grad():
        model.stem[1].weight[0] *= 1000
        model.stem[1].bias[0] = model.stem[1].bias[0].abs() * 1000 + 1000
        for conv in (model.layers[0].conv1, model.layers[1].conv1, model.layers[1].shortcut[0]):
            conv.weight[:, 0] = 0
    return model


@pytest.fixture(scope="module")
def outlier_debug(tmp_path_factory):
    from typer.testing import CliRunner

    from vdeploy.cli import app

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("rknn-debug") / "outlier_cnn.pt2"
    torch.export.save(torch.export.export(_outlier_cnn(), (torch.randn(1, 3, 32, 32),)), str(path))
    run = CliRunner().invoke(
        app, ["debug", str(path), "--target", TARGET, "--precision", "int8", "--json"], catch_exceptions=False
    )
    return run.exit_code, run.stdout, run.stderr


def test_debug_names_the_layer_where_int8_explodes(outlier_debug):
    """vdeploy debug: the plan's bisect, then rknn-toolkit2's accuracy_analysis of the plain INT8 build names the
    layer after the outlier; the build itself held the gate because the INT8 fallback rebuilt it with the
    compiler's hybrid quantization (sensitive layers in float16)."""
    code, stdout, stderr = outlier_debug
    assert code == 0, stderr
    report = json.loads(stdout)
    assert report["stages"][-1]["name"] == "backend" and report["stages"][-1]["ok"]  # the fallback made it hold
    layers = report["layers"]
    assert layers["source"].startswith("rknn-toolkit2 2.5.0 accuracy_analysis") and len(layers["rows"]) > 8
    assert layers["hybrid_level"] == 0 and layers["artifact_hybrid_level"] == 1  # analysed: the plain INT8 build
    first = layers["first_below_gate"]
    rows = layers["rows"]
    index = next(i for i, r in enumerate(rows) if r["name"] == first["name"])
    assert all(r["cos_entire"] >= layers["gate_cosine"] for r in rows[:index]) and first["cos_entire"] < 0.97
    stem = rows[index - 1]  # Conv+BN+ReLU fused: the outlier tensor itself quantizes well
    assert stem["onnx_node"] == "node_relu" and stem["cos_entire"] > 0.999, stem
    assert first["onnx_node"] == "node_relu_1", first  # layers[0].conv1 (+ its ReLU), reading the crushed channels


def test_analysis_rows_parse_and_judge():
    from vdeploy.backends.toolchain_workers.rknn_worker import parse_analysis
    from vdeploy.layer_analysis import judge

    text = (
        "layer_name   simulator_error\n---------\n[Input] x   1.00000 | 0.00000   1.00000 | 0.00000\n"
        "[Conv] a_conv  0.99990 | 0.1   0.99990 | 0.1\n[exNorm] ln-rs  0.95000 | 2.5   0.99000 | 1.0\n"
        "[Slice] cls_sw  0.82000 | 8.2   0.99997 | 0.1\n"
    )
    rows = parse_analysis(text)
    assert [r["op"] for r in rows] == ["Input", "Conv", "exNorm", "Slice"] and rows[2]["cos_single"] == 0.99
    result = judge({"source": "t", "layers": rows}, 0.97)
    assert result.first_below_gate.name == "ln-rs" and result.largest_drop.name == "cls_sw"
    assert result.largest_drop_from == 0.95 and result.worst_single.name == "ln-rs"
