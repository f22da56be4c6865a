"""`vdeploy validate BUNDLE`: the bundle alone is enough to re-check numerics, latency and budgets."""

from __future__ import annotations

import pytest


@pytest.fixture
def bundle(cli, saved_pt2, tmp_path):
    def make(*extra, target="onnxruntime-cpu"):
        result = cli("build", saved_pt2("cnn"), "--target", target, "--out", tmp_path, "--iters", 5, *extra)
        assert result.exit_code in (0, 3), result.stderr
        return tmp_path / f"cnn-{target}"

    return make


@pytest.mark.parametrize("target", ["onnxruntime-cpu", "x86-cpu"])
def test_validate_passes_on_a_fresh_bundle(cli, bundle, target):
    result = cli("validate", bundle(target=target), "--iters", 5, "--json")
    assert result.exit_code == 0, result.stderr
    report = result.json
    assert report["verdict"] == "pass" and report["latency_ms"]["runs"] == 5
    assert report["numerics"]["rel_err"] < 1e-5 and report["numerics"]["top1_agreement"] == 1.0


def test_validate_applies_the_bundle_budgets(cli, bundle):
    result = cli("validate", bundle("--max-latency-ms", "0.001"), "--iters", 5, "--json")
    assert result.exit_code == 3
    assert [v["budget"] for v in result.json["violations"]] == ["latency_ms"]


def test_tampered_artifact_is_refused(cli, bundle):
    path = bundle()
    data = bytearray((path / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (path / "model.onnx").write_bytes(bytes(data))
    result = cli("validate", path, "--json")
    assert result.exit_code == 1 and "model.onnx does not match its sha256" in result.stderr


def test_wrong_expected_outputs_fail_numerics(cli, bundle):
    """Numerics are really re-checked: corrupt the expected outputs (and re-hash) and the gate fails."""
    import hashlib
    import json

    import numpy as np

    path = bundle()
    with np.load(path / "reference_io.npz") as data:
        arrays = {k: data[k] for k in data.files}
    for key in arrays:
        if key.startswith("output:"):
            arrays[key] = arrays[key] * 1.5
    np.savez(path / "reference_io.npz", **arrays)
    manifest = json.loads((path / "manifest.json").read_text())
    for entry in manifest["files"]:
        if entry["path"] == "reference_io.npz":
            blob = (path / "reference_io.npz").read_bytes()
            entry["sha256"], entry["bytes"] = hashlib.sha256(blob).hexdigest(), len(blob)
    (path / "manifest.json").write_text(json.dumps(manifest))
    result = cli("validate", path, "--iters", 2, "--json")
    assert result.exit_code == 3
    assert "max_rel_err" in {v["budget"] for v in result.json["violations"]}


def test_not_a_bundle(cli, tmp_path):
    result = cli("validate", tmp_path, "--json")
    assert result.exit_code == 1 and "is not a vdeploy bundle" in result.stderr
