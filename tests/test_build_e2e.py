"""End to end on the real backends: golden models built for x86-cpu (OpenVINO) and onnxruntime-cpu (ORT)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

MANIFEST_KEYS = {
    "target",
    "backend",
    "precision",
    "model",
    "files",
    "inputs",
    "outputs",
    "coverage",
    "numerics",
    "measured",  # latency_ms, power_w, peak_mem_mb: what differs between two builds of the same inputs
    "size_mb",
    "budgets",
    "violations",
    "verdict",
    "toolchain",
    "reason",
}
COVERAGE_KEYS = {"ops_before", "ops_after", "fused", "decomposed", "unsupported", "rules"}


@pytest.mark.parametrize("target", ["x86-cpu", "onnxruntime-cpu"])
@pytest.mark.parametrize("model", ["vit", "mobilevit", "cnn"])
def test_build_passes(cli, saved_pt2, tmp_path, model, target):
    result = cli("build", saved_pt2(model), "--target", target, "--out", tmp_path, "--iters", 10, "--json")
    assert result.exit_code == 0, result.stderr
    manifest = result.json
    assert MANIFEST_KEYS <= manifest.keys()
    assert {"latency_ms", "power_w", "peak_mem_mb"} <= manifest["measured"].keys()
    assert COVERAGE_KEYS <= manifest["coverage"].keys()
    assert manifest["verdict"] == "pass" and manifest["violations"] == []
    assert manifest["target"] == target and manifest["precision"] == "fp32"
    assert manifest["model"]["format"] == "torch.export" and len(manifest["model"]["sha256"]) == 64

    bundle = tmp_path / f"{model}-{target}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [bundle.name]  # no temp dirs left over
    listed = {f["path"] for f in manifest["files"]}
    on_disk = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    on_disk -= {"manifest.json", "report.html"}  # both describe the files; neither is hashed
    assert listed == on_disk
    for entry in manifest["files"]:
        data = (bundle / entry["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"]

    numerics, tolerance = manifest["numerics"], manifest["budgets"]["numerics"]
    assert numerics["rel_err"] <= tolerance["max_rel_err"] and numerics["cosine"] >= tolerance["min_cosine"]
    assert numerics["top1_agreement"] == 1.0
    latency = manifest["measured"]["latency_ms"]
    assert latency["runs"] >= 10 and 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
    assert manifest["measured"]["power_w"] is None and "power_w" in manifest["reason"]


def test_reference_io_reproduces_outputs(cli, saved_pt2, tmp_path):
    """reference_io.npz holds the inputs and expected outputs; running the ONNX artifact on them reproduces them."""
    import onnxruntime as ort

    result = cli("build", saved_pt2("cnn"), "--target", "onnxruntime-cpu", "--out", tmp_path, "--iters", 5, "--json")
    assert result.exit_code == 0, result.stderr
    bundle = tmp_path / "cnn-onnxruntime-cpu"
    io = np.load(bundle / "reference_io.npz")
    inputs = {k.split(":", 1)[1]: io[k] for k in io.files if k.startswith("input:")}
    outputs = [io[k] for k in io.files if k.startswith("output:")]
    assert list(inputs) == [i["name"] for i in result.json["inputs"]]
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    name, stacked = next(iter(inputs.items()))
    got = np.stack([session.run(None, {name: x})[0] for x in stacked])
    scale = np.abs(outputs[0]).max()
    assert np.abs(got - outputs[0]).max() <= 1e-4 * scale


def test_impossible_latency_budget_fails_with_exit_3(cli, saved_pt2, tmp_path):
    result = cli(
        "build",
        saved_pt2("cnn"),
        "--target",
        "x86-cpu",
        "--out",
        tmp_path,
        "--iters",
        5,
        "--max-latency-ms",
        "0.001",
        "--json",
    )
    assert result.exit_code == 3, result.stderr
    manifest = result.json
    assert manifest["verdict"] == "fail"
    assert [v["budget"] for v in manifest["violations"]] == ["latency_ms"]
    assert manifest["budgets"]["latency_ms"] == 0.001
    assert (tmp_path / "cnn-x86-cpu" / "manifest.json").exists()


def test_power_budget_without_a_meter_is_unverified(cli, saved_pt2, tmp_path):
    result = cli(
        "build",
        saved_pt2("cnn"),
        "--target",
        "onnxruntime-cpu",
        "--out",
        tmp_path,
        "--iters",
        5,
        "--max-power-w",
        "5",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    assert result.json["verdict"] == "unverified"
    assert any(item.startswith("power_w:") for item in result.json["reason"]["unverified"])


def test_rebuild_replaces_the_bundle(cli, saved_pt2, tmp_path):
    args = ("build", saved_pt2("cnn"), "--target", "onnxruntime-cpu", "--out", tmp_path, "--iters", 5)
    assert cli(*args).exit_code == 0
    stale = tmp_path / "cnn-onnxruntime-cpu" / "stale.txt"
    stale.write_text("from an older build")
    assert cli(*args).exit_code == 0
    assert not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn-onnxruntime-cpu"]


def test_human_report_shows_coverage_numerics_latency(cli, saved_pt2, tmp_path):
    result = cli("build", saved_pt2("vit"), "--target", "x86-cpu", "--out", tmp_path, "--iters", 5)
    assert result.exit_code == 0, result.stderr
    for text in ("operator coverage", "LayerNormalization", "numerics vs reference", "latency: p50", "verdict: PASS"):
        assert text in result.stdout
    assert "PASS" in (tmp_path / "vit-x86-cpu" / "report.html").read_text()


def test_peak_memory_is_measured_and_gated(cli, saved_pt2, tmp_path):
    catalog = tmp_path / "targets.yaml"
    catalog.write_text("""
op_profiles:
  ort: {source: "onnxruntime 1.31.1 kernel registry (subset)", ops: [Conv, Relu, Add, Gemm, ReduceMean, Constant]}
targets:
  tight:
    description: "a host with almost no memory"
    backend: onnxruntime
    op_profile: ort
    precisions: [fp32]
    budgets: {peak_mem_mb: 1}
    tolerances: {fp32: {max_rel_err: 1.0e-4, min_cosine: 0.9999}}
""")
    result = cli(
        "build",
        saved_pt2("cnn"),
        "--target",
        "tight",
        "--out",
        tmp_path / "out",
        "--iters",
        3,
        "--json",
        "--targets-file",
        catalog,
    )
    assert result.exit_code == 3, result.stderr
    manifest = result.json
    assert manifest["measured"]["peak_mem_mb"] > 10  # a Python process with ONNX Runtime loaded
    assert [v["budget"] for v in manifest["violations"]] == ["peak_mem_mb"]
