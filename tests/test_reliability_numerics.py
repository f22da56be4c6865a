"""Issue 15, defects 1-2: a non-finite reference or metric fails closed; manifests and --json are strict JSON."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from vdeploy.targets import Budgets, Tolerance
from vdeploy.validate.budgets import Verdict, judge
from vdeploy.validate.compare import compare


def strict_loads(text: str):
    """What Node's JSON.parse and strict CI tools accept: no NaN / Infinity literals."""

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


class Exp(torch.nn.Module):
    def forward(self, x):
        return torch.exp(x * 100.0)  # inf in fp32 for x > ~0.89


class Fp16Overflow(torch.nn.Module):
    def forward(self, x):
        y = torch.relu((x * 300.0) * (x * 300.0)) - 5.0  # finite in fp32, inf in fp16 (> 65504)
        return torch.relu(y) * 0.001


def save(module, path):
    torch.export.save(torch.export.export(module.eval(), (torch.randn(1, 4),)), str(path))
    return path


def test_inf_reference_is_refused_with_a_clear_reason(cli, tmp_path):
    model = save(Exp(), tmp_path / "exp.pt2")
    result = cli("build", model, "--target", "onnxruntime-cpu", "--out", tmp_path / "out", "--iters", 2)
    assert result.exit_code == 1
    assert "the PyTorch reference produced inf on the validation inputs" in result.stderr
    assert not (tmp_path / "out").exists()


def test_nan_metric_fails_closed():
    """An infinite reference against finite outputs gives rel_err/cosine NaN: NaN compares false, so no gate
    failed and the verdict was PASS."""
    reference = {"y": np.array([[[1.0, np.inf, 2.0]], [[0.5, 1.0, 3.0]]])}
    outputs = {"y": np.array([[[1.0, 3.0, 2.0]], [[0.5, 1.0, 3.0]]])}
    numerics = compare(reference, outputs)
    assert np.isnan(numerics.rel_err) or np.isnan(numerics.cosine)
    judgement = judge(
        Budgets(),
        Tolerance(max_rel_err=1e-3, min_cosine=0.999),
        numerics=numerics,
        latency=None,
        size_mb=1.0,
        power_w=None,
        missing={},
    )
    assert judgement.verdict is Verdict.failed
    failed = {v.budget for v in judgement.violations}
    assert failed & {"max_rel_err", "min_cosine"}
    assert all(
        v.to_manifest()["measured"] is None or np.isfinite(v.to_manifest()["measured"]) for v in judgement.violations
    )


@pytest.fixture
def fp16_overflow_build(cli, tmp_path):
    model = save(Fp16Overflow(), tmp_path / "ovf.pt2")
    result = cli(
        "build",
        model,
        "--target",
        "onnxruntime-cpu",
        "--precision",
        "fp16",
        "--out",
        tmp_path / "out",
        "--iters",
        2,
        "--json",
    )
    return result, tmp_path / "out" / "ovf-onnxruntime-cpu"


def test_manifest_is_strict_json_when_a_metric_is_not_finite(fp16_overflow_build):
    result, bundle = fp16_overflow_build
    assert result.exit_code == 3, result.stderr
    printed = strict_loads(result.stdout)
    manifest = strict_loads((bundle / "manifest.json").read_text())
    assert printed == manifest
    assert manifest["verdict"] == "fail"
    assert manifest["numerics"]["max_abs"] is None
    assert manifest["reason"]["non_finite"]["numerics.max_abs"] == "inf"
    assert "not finite" in manifest["reason"]["numerics"]


def test_validate_fails_closed_on_non_finite_expected_outputs(cli, saved_pt2, tmp_path):
    """A reference_io.npz whose expected outputs hold inf (re-hashed, so the hashes verify) must not pass."""
    result = cli("build", saved_pt2("cnn"), "--target", "onnxruntime-cpu", "--out", tmp_path, "--iters", 2)
    assert result.exit_code == 0, result.stderr
    bundle = tmp_path / "cnn-onnxruntime-cpu"
    with np.load(bundle / "reference_io.npz") as data:
        arrays = {k: data[k].copy() for k in data.files}
    key = next(k for k in arrays if k.startswith("output:"))
    arrays[key][0, 0, 0] = np.inf
    np.savez(bundle / "reference_io.npz", **arrays)
    manifest = json.loads((bundle / "manifest.json").read_text())
    for entry in manifest["files"]:
        if entry["path"] == "reference_io.npz":
            entry["sha256"] = hashlib.sha256((bundle / "reference_io.npz").read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    checked = cli("validate", bundle, "--iters", 2, "--json")
    assert checked.exit_code == 3, checked.stderr
    report = strict_loads(checked.stdout)
    assert report["verdict"] == "fail" and report["reason"]["non_finite"]
