"""The plan of stages: build, coverage and debug run the same plan; debug judges the artifact build makes; the
bisect legalizes once; a plan re-runs from a stage with one choice changed, reusing the shared work."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

import vdeploy
from vdeploy.pipeline import BuildRequest, new_state
from vdeploy.plan import Shared, plan, resume_from, run_plan, stages_from
from vdeploy.targets import load_catalog

ORT = "onnxruntime-cpu"


@pytest.fixture(scope="module")
def vit(saved_pt2):
    return str(saved_pt2("vit"))


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.npy"
    np.save(path, np.random.default_rng(5).standard_normal((16, 3, 32, 32)).astype(np.float32))
    return path


def test_plan_names_the_stages_in_order():
    target = load_catalog().get(ORT)
    names = [s.name for s in plan(target, BuildRequest(model="m", targets=(ORT,)))]
    assert names == [
        "load",
        "reference",
        "export",
        "prune",
        "legalize",
        "check",
        "runtime",
        "precision",
        "compile",
        "run",
        "compare",
        "accuracy",
        "judge",
    ]
    assert [s.name for s in plan(target, BuildRequest(model="m", targets=(ORT,)), until="legalize")] == [
        "load",
        "export",
        "prune",
        "legalize",
    ]  # coverage: no reference run, nothing compiled


def test_debug_judges_the_artifact_build_makes_for_int8_with_calib(vit, calib, tmp_path):
    """Same options -> the same plan -> byte-identical artifact files, and the same numerics."""
    built = vdeploy.build(vit, ORT, precision="int8", calib=calib, out=tmp_path / "out", iters=1)
    report = vdeploy.debug(vit, ORT, precision="int8", calib=calib)
    hashes = {f["path"]: f["sha256"] for f in built.manifest["files"]}
    assert report.artifact_files and report.artifact_files == {p: hashes[p] for p in report.artifact_files}
    backend = report.stages[-1]
    assert backend.name == "backend"
    assert backend.cosine == pytest.approx(built.numerics["cosine"], rel=0, abs=1e-12)
    assert built.manifest["precision_info"]["calibration"]["source"].startswith("npy:")


def test_bisect_legalizes_once(vit, monkeypatch):
    """One pass: legalization runs once for the whole bisect (the old bisect re-legalized every rule prefix)."""
    from vdeploy.graph_passes import legalize as legalize_module

    calls = []
    real = legalize_module.legalize

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(legalize_module, "legalize", counting)
    report = vdeploy.debug(vit, ORT, samples=2)
    assert len(calls) == 1
    assert any(stage.name.startswith("legalize:") for stage in report.stages)
    assert report.first_bad_stage is None


def test_coverage_runs_no_reference(vit, monkeypatch):
    import vdeploy.reference

    def refuse(*_a, **_k):
        raise AssertionError("coverage ran the reference")

    monkeypatch.setattr(vdeploy.reference, "reference_outputs", refuse)
    results = vdeploy.coverage(vit, [ORT, "rk3588-npu"])
    assert set(results) == {ORT, "rk3588-npu"} and not results[ORT].unsupported


def test_resume_from_reuses_the_shared_work_and_changes_one_choice(vit, tmp_path, monkeypatch):
    """A --fit style re-run: from the precision stage with another precision; load/reference/export are not redone."""
    import vdeploy.export

    exports = []
    real_export = vdeploy.export.export_onnx
    monkeypatch.setattr(vdeploy.export, "export_onnx", lambda *a, **k: exports.append(1) or real_export(*a, **k))
    target = load_catalog().get(ORT)
    request = BuildRequest(model=vit, targets=(target.name,), iters=1, warmup=0, samples=2)
    stages = plan(target, request)
    state = new_state(request, target, Shared(), lambda _: None)
    state.work_dir = tmp_path / "fp32"
    state.work_dir.mkdir()
    run_plan(stages, state, ())
    fp16 = resume_from(
        state,
        "precision",
        changes={
            "precision": "fp16",
            "work_dir": tmp_path / "fp16",
            "request": dataclasses.replace(request, precision="fp16"),
        },
    )
    fp16.work_dir.mkdir()
    run_plan(stages_from(stages, "precision"), fp16, ())
    assert len(exports) == 1 and fp16.legal is state.legal
    assert state.artifact.precision == "fp32" and fp16.artifact.precision == "fp16"
    assert fp16.judgement is not None and fp16.numerics.cosine > 0.99


def test_api_builds_an_in_memory_module_for_x86_and_jetson(tmp_path):
    import torch

    from tests.models.vit import build_vit

    module = build_vit(seed=0)
    example = (torch.randn(1, 3, 32, 32),)
    results = vdeploy.build(
        module, ["x86-cpu", "jetson"], example_inputs=example, out=tmp_path, iters=2, name="golden_vit"
    )
    assert [r.target for r in results] == ["x86-cpu", "jetson-orin-nano"]
    x86, jetson = results
    assert x86.verdict == "pass" and x86.numerics["cosine"] > 0.9999
    assert x86.backend == x86.manifest["runtime_pick"]["chosen"].split("-")[0]  # the faster runtime, measured
    assert x86.bundle == tmp_path / "golden_vit-x86-cpu" and (x86.bundle / "manifest.json").is_file()
    assert jetson.precision == "fp16" and jetson.verdict == "unverified"  # engine built on the device
    assert x86.manifest["model"]["path"] == "<in-memory golden_vit>"
    again = vdeploy.build(module, "x86-cpu", example_inputs=example, out=tmp_path / "again", iters=2, name="golden_vit")
    assert again.manifest["model"]["sha256"] == x86.manifest["model"]["sha256"]  # same weights, same digest


def test_api_errors_are_the_cli_errors(tmp_path):
    import torch

    from vdeploy.errors import ModelLoadError, TargetError, UsageError

    with pytest.raises(TargetError, match="unknown target") as info:
        vdeploy.build("timm:resnet18", "no-such-chip", out=tmp_path)
    assert "vdeploy targets" in info.value.hint
    with pytest.raises(ModelLoadError, match="example_inputs"):
        vdeploy.build(torch.nn.Linear(4, 4), ORT, out=tmp_path)
    with pytest.raises(UsageError, match="unknown build option"):
        vdeploy.build("m.pt2", ORT, out=tmp_path, precison="int8")
    assert not any(tmp_path.iterdir())


def test_targets_lists_the_catalogue_with_op_lists():
    listed = vdeploy.targets()
    by_name = {t.name: t for t in listed}
    assert "x86-cpu" in by_name and "LayerNormalization" in by_name["x86-cpu"].ops
    assert vdeploy.targets is __import__("vdeploy.targets").targets  # the module itself, callable


def test_plan_timings_are_recorded_per_stage(vit, tmp_path):
    start = time.perf_counter()
    result = vdeploy.build(vit, ORT, out=tmp_path, iters=1)
    assert set(result.timings) >= {"load", "export", "legalize", "compile", "run", "judge"}
    assert sum(result.timings.values()) <= time.perf_counter() - start
