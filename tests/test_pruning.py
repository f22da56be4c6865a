"""The prune stage in the plan: a pruned build for onnxruntime-cpu and x86-cpu, judged against the UNPRUNED model
(gates fail honestly, the manifest and console say pruning is why), its plan replays to the same bytes, resume_from
switches pruning on and off without re-measuring, and bad requests are clear errors.
"""

from __future__ import annotations

import dataclasses
import io

import pytest
from rich.console import Console

import vdeploy
from vdeploy.api import request_for
from vdeploy.errors import UsageError
from vdeploy.pipeline import new_state
from vdeploy.plan import Shared, plan, resume_from, run_plan, stages_from
from vdeploy.prune_stage import HeadPruning
from vdeploy.targets import load_catalog

ORT = "onnxruntime-cpu"


@pytest.fixture(scope="module")
def vit(saved_pt2):
    return str(saved_pt2("vit"))


@pytest.fixture(scope="module")
def pruned_builds(vit, tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned")
    return vdeploy.build(vit, [ORT, "x86-cpu"], out=out, prune_heads=2, samples=4, iters=2, warmup=1)


def test_pruned_builds_are_judged_against_the_unpruned_model(pruned_builds):
    for result in pruned_builds:
        pruning = result.manifest["pruning"]
        assert pruning["heads_total"] == 8 and pruning["heads_removed"] == 2 and not pruning["refused"]
        scores = pruning["importance"]["scores"]
        assert set(scores) == {"attn0", "attn1"} and all(len(v) == 4 for v in scores.values())
        removed = {(b["id"], h) for b in pruning["blocks"] for h in b["removed"]}
        ranked = sorted((s, b, h) for b, v in scores.items() for h, s in enumerate(v))
        assert removed == {(b, h) for _, b, h in ranked[:2]}  # the two least important, measured
        assert pruning["flops_counted"]["removed_pct"] > 0 and pruning["params_removed"] > 0
        assert "attention_from_matmul_softmax" in result.coverage["rules"]  # legalization captured it again
        assert 0.5 < result.numerics["cosine"] < 0.9999  # the cost of pruning, measured by running the artifact
        assert result.verdict == "fail" and result.exit_code == 3
        assert "min_cosine" in {v["budget"] for v in result.violations}
        assert "unpruned" in pruning["judged_against"]
    assert [r.backend for r in pruned_builds] == ["onnxruntime", "openvino"]


def test_the_console_says_pruning_is_why(pruned_builds):
    from vdeploy.report import print_build

    buffer = io.StringIO()
    print_build(pruned_builds[0].manifest, pruned_builds[0].bundle, Console(file=buffer, width=200))
    text = buffer.getvalue()
    assert "pruning: 2 of 8 attention heads removed" in text and "UNPRUNED" in text


def test_the_recorded_plan_rebuilds_the_same_bytes(vit, pruned_builds, tmp_path):
    first = pruned_builds[0]
    again = vdeploy.build(
        vit, ORT, out=tmp_path, prune_heads=first.manifest["pruning"]["plan"], samples=4, iters=1, warmup=0
    )
    hashes = lambda r: {f["path"]: f["sha256"] for f in r.manifest["files"] if f["path"].endswith(".onnx")}  # noqa: E731
    assert hashes(again) and hashes(again) == hashes(first)
    assert again.manifest["pruning"]["importance"] is None  # a given plan: nothing measured


def test_resume_from_prune_switches_pruning_without_re_measuring(vit, tmp_path, monkeypatch):
    import vdeploy.head_importance as importance_module

    measured = []
    real = importance_module.head_importance
    monkeypatch.setattr(importance_module, "head_importance", lambda *a, **k: measured.append(1) or real(*a, **k))
    target = load_catalog().get(ORT)
    request = request_for(vit, (ORT,), prune_heads=2, samples=2, iters=1, warmup=0)
    state = new_state(request, target, Shared(), lambda _: None)
    state.work_dir = tmp_path / "two"
    state.work_dir.mkdir()
    run_plan(plan(target, request), state, ())
    assert state.pruning.result.heads_removed == 2 and state.judgement.verdict.value == "fail"
    runs = {}
    for name, choice in (("none", None), ("three", HeadPruning(count=3))):
        resumed = resume_from(
            state,
            "prune",
            changes={"request": dataclasses.replace(request, prune_heads=choice), "work_dir": tmp_path / name},
        )
        resumed.work_dir.mkdir()
        run_plan(stages_from(plan(target, resumed.request), "prune"), resumed, ())
        runs[name] = resumed
    assert runs["none"].pruning is None and runs["none"].judgement.verdict.value == "pass"
    assert runs["three"].pruning.result.heads_removed == 3
    removed = lambda st: {(b.id, h) for b in st.pruning.result.pruned for h in b.removed}  # noqa: E731
    assert removed(state) < removed(runs["three"])  # the same ranking, one more head
    assert runs["three"].numerics.cosine < 0.9999
    assert runs["three"].pruning.importance is state.pruning.importance and len(measured) == 1


def test_debug_shows_pruning_as_its_own_stage(vit):
    report = vdeploy.debug(vit, ORT, prune_heads={"attn0": [0, 1, 2], "attn1": [1, 2, 3]}, samples=2)
    names = [s.name for s in report.stages]
    assert names.index("canonicalize") + 1 == names.index("prune")
    assert report.first_bad_stage == "prune"


def test_bad_pruning_requests_are_clear_errors(saved_pt2, tmp_path):
    for bad in (0, True, "no-such-plan.json", {"attn0": "x"}, {"count": 0}):
        with pytest.raises(UsageError):
            HeadPruning.of(bad)
    assert HeadPruning.of({"keep": {"attn1": [2, 0]}}) == HeadPruning(keep=(("attn1", (2, 0)),))
    assert HeadPruning.of(HeadPruning(count=2).to_json()) == HeadPruning(count=2) == HeadPruning.of("2")
    with pytest.raises(UsageError, match="no attention block"):
        vdeploy.build(str(saved_pt2("cnn")), ORT, out=tmp_path, prune_heads=1, samples=2, iters=1)
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_cli_prune_heads_builds_and_a_bad_spec_is_one_line(cli, vit, tmp_path):
    bad = cli("build", vit, "--target", ORT, "--prune-heads", str(tmp_path / "no-plan.json"), "--out", tmp_path)
    assert bad.exit_code == 1 and "pruning plan" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())
    good = cli("build", vit, "--target", ORT, "--prune-heads", "2", "--iters", "2", "--out", tmp_path, "--json")
    assert good.exit_code == 3  # built; the FP32 numerics gate fails honestly (judged against the unpruned model)
    assert good.json["pruning"]["heads_removed"] == 2 and good.json["pruning"]["request"]["count"] == 2
