"""Apache TVM targets, real runs: op profile vs the installed frontend, ELF output, tuning cache, bundles, errors.

legal ONNX -> TvmBackend.compile -> model.so (aarch64 via the cross compiler, or this host's x86-64) + params.bin
-> numerics (in process on x86, under qemu-user for aarch64) -> tuning records (cache, bundle, --tuning-db)
-> run_tvm.py / `vdeploy validate`. Every build isolates its tuning cache with VDEPLOY_CACHE.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

tvm = pytest.importorskip("tvm")

from tests.conftest import CliResult  # noqa: E402
from tests.test_bad_input import assert_clean_failure  # noqa: E402
from vdeploy.backends.base import Artifact, CompileJob  # noqa: E402
from vdeploy.backends.tvm_qemu import runner_problem  # noqa: E402
from vdeploy.cli import app  # noqa: E402
from vdeploy.targets import DEFAULT_CATALOG, OpId, Precision, load_catalog  # noqa: E402
from vdeploy.validate.isolate import run_artifact  # noqa: E402

ARM, X86 = "arm-cortex-a76", "x86-cpu-tvm"
EM_X86_64, EM_AARCH64, ET_DYN = 62, 183, 3
# Left out of the profile: com.microsoft ops the frontend reads without their domain, and AllClassNMS (TVM's own
# op, in no ONNX schema).
CONTRIB_OPS = {
    "Attention",
    "BiasGelu",
    "EmbedLayerNormalization",
    "FastGelu",
    "SkipLayerNormalization",
    "MatMulInteger16",
    "AllClassNMS",
}
TUNE_TRIALS = 4  # MetaSchedule's start-up dominates (about 1-2 min here): one tiny budget, one small model
QEMU = runner_problem()
needs_qemu = pytest.mark.skipif(QEMU is not None, reason=f"aarch64 TVM runner unavailable: {QEMU}")


def run_cli(*args, env: dict | None = None) -> CliResult:
    """`vdeploy ARGS...` in process (the `cli` fixture, usable from module-scoped fixtures)."""
    result = CliRunner().invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)
    return CliResult(result.exit_code, result.stdout, result.stderr)


def elf_header(path: Path) -> tuple[int, int, int]:
    """(EI_CLASS, e_type, e_machine) of an ELF file, read from its header bytes."""
    head = path.read_bytes()[:20]
    assert head[:4] == b"\x7fELF", head[:4]
    order = {1: "<", 2: ">"}[head[5]]  # EI_DATA: little / big endian
    e_type, e_machine = struct.unpack_from(order + "HH", head, 16)
    return head[4], e_type, e_machine


def tuning(manifest: dict) -> dict:
    return manifest["artifact"]["details"]["tuning"]


def bundle_outputs(bundle: Path) -> list[np.ndarray]:
    """The bundle's artifact run on its reference_io.npz inputs (a child process, as build and validate run it)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    with np.load(bundle / "reference_io.npz") as data:
        feeds = {k.split(":", 1)[1]: data[k] for k in data.files if k.startswith("input:")}
    return run_artifact(Artifact.from_dict(manifest["artifact"]), bundle, feeds, warmup=0, iters=0).outputs


def edited_catalog(path: Path, edit) -> Path:
    """A copy of the shipped targets.yaml with `edit(data)` applied."""
    data = yaml.safe_load(DEFAULT_CATALOG.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --- the op profile is the installed frontend's ------------------------------------------------------------------


def test_tvm_relax_profile_is_the_frontend_convert_map():
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    frontend = {OpId("", name) for name in _get_convert_map()} - {OpId("", name) for name in CONTRIB_OPS}
    profile = load_catalog().op_set("tvm-relax")
    assert profile == frontend, {
        "profile only": sorted(map(str, profile - frontend)),
        "frontend only": sorted(map(str, frontend - profile)),
    }
    assert all(load_catalog().get(name).op_set == profile for name in (ARM, X86))


# --- timm architectures: aarch64 and x86-64 shared objects from the same legal graph (slow) ----------------------


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["deit_tiny_patch16_224", "mobilevit_xs", "resnet18"])
def test_timm_models_compile_to_elf_for_both_targets(arch, tmp_path, monkeypatch):
    from vdeploy.backends import get_backend
    from vdeploy.pipeline import BuildRequest, new_state
    from vdeploy.plan import Shared, plan, run_plan
    from vdeploy.timm_compat import import_timm
    from vdeploy.validate.compare import compare

    try:
        import_timm()
    except ImportError as exc:
        pytest.skip(f"timm not importable: {exc}")
    monkeypatch.setenv("VDEPLOY_CACHE", str(tmp_path / "cache"))
    catalog, backend = load_catalog(), get_backend("tvm")
    arm, x86 = catalog.get(ARM), catalog.get(X86)
    request = BuildRequest(model=f"timm:{arch}", targets=(ARM,), samples=2)  # untuned deit: ~1 s per inference
    state = run_plan(plan(arm, request, until="check"), new_state(request, arm, Shared(), lambda _: None), ())
    legal = state.legal

    arm_dir, x86_dir = tmp_path / "arm", tmp_path / "x86"
    arm_dir.mkdir()
    x86_dir.mkdir()
    arm_artifact = backend.compile(CompileJob(legal, "fp32", arm_dir, arm, arm.backend_options({"tune_trials": 0})))
    assert arm_artifact.option("arch") == "aarch64"
    assert elf_header(arm_dir / arm_artifact.entry) == (2, ET_DYN, EM_AARCH64)  # ELFCLASS64 shared object

    assert (x86.spec.opset, x86.op_set) == (arm.spec.opset, arm.op_set)  # so the same legal graph serves both
    x86_artifact = backend.compile(CompileJob(legal, "fp32", x86_dir, x86, x86.backend_options({"tune_trials": 0})))
    assert x86_artifact.option("arch") == "x86_64"
    assert elf_header(x86_dir / x86_artifact.entry) == (2, ET_DYN, EM_X86_64)
    for artifact in (arm_artifact, x86_artifact):
        report = dict(artifact.details)["tuning"]
        assert report["trials"] == report["tuned"] == report["reused"] == 0
        assert report["untuned"] == report["tasks"] > 0

    initializers = {t.name for t in legal.graph.initializer}
    feeds = dict(zip([i.name for i in legal.graph.input if i.name not in initializers], state.shared.samples.values()))
    run = run_artifact(x86_artifact, x86_dir, feeds, warmup=0, iters=0)
    expected = dict(zip([o.name for o in legal.graph.output], state.shared.reference))
    numerics = compare(expected, dict(zip(expected, run.outputs)))
    gate = x86.spec.tolerances[Precision.fp32]
    assert numerics.rel_err <= gate.max_rel_err and numerics.cosine >= gate.min_cosine, numerics


# --- end to end, aarch64 under qemu -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def arm_vit(saved_pt2, tmp_path_factory):
    """(manifest, bundle) of `vdeploy build vit.pt2 --target arm-cortex-a76 --tune-trials 0`, built once."""
    out, cache = tmp_path_factory.mktemp("arm-out"), tmp_path_factory.mktemp("arm-cache")
    result = run_cli(
        "build",
        saved_pt2("vit"),
        "--target",
        ARM,
        "--tune-trials",
        0,
        "--out",
        out,
        "--json",
        env={"VDEPLOY_CACHE": str(cache)},
    )
    assert result.exit_code == 0, result.stderr
    return result.json, out / f"vit-{ARM}"


@needs_qemu
def test_arm_build_validates_the_aarch64_module_under_qemu(arm_vit):
    manifest, bundle = arm_vit
    assert manifest["target"] == ARM and manifest["backend"] == "tvm" and manifest["verdict"] == "unverified"
    assert manifest["artifact"]["options"]["arch"] == "aarch64"
    assert elf_header(bundle / "model.so") == (2, ET_DYN, EM_AARCH64)
    assert manifest["numerics"]["rel_err"] <= 1e-4 and manifest["numerics"]["samples"] == 8  # the .so, run by qemu
    assert manifest["measured"]["latency_ms"]["source"] == manifest["measured"]["power_w"]["source"] == "estimate"
    runs = manifest["measured"]["latency_ms"]["runs"]
    assert runs == 0  # qemu timings say nothing about a Cortex-A76: none are taken
    assert any(u.startswith("latency_ms: only estimated") for u in manifest["reason"]["unverified"])
    assert manifest["violations"] == []
    files = {f["path"] for f in manifest["files"]}
    assert {
        "model.so",
        "params.bin",
        "run_tvm.py",
        "reference_io.npz",
        "HANDOFF.txt",
        "tuning/database_workload.json",
        "tuning/database_tuning_record.json",
    } <= files
    assert all((bundle / f).is_file() for f in files)
    report = tuning(manifest)
    assert report["budget"] == report["trials"] == report["records_shipped"] == 0
    assert report["untuned"] == report["tasks"] > 0
    assert report["target"]["mtriple"] == "aarch64-linux-gnu" and "mtriple" not in report["tuned_on"]


@needs_qemu
def test_arm_manifest_says_latency_is_estimated_because_of_qemu(arm_vit):
    manifest, _ = arm_vit
    assert "qemu" in json.dumps(manifest["reason"])


@needs_qemu
def test_validate_arm_bundle_under_qemu_is_unverified(arm_vit):
    _, bundle = arm_vit
    result = run_cli("validate", bundle, "--json", "--iters", 3)
    assert result.exit_code == 0, result.stderr
    report = result.json
    assert report["verdict"] == "unverified" and report["latency_ms"] is None
    assert "qemu" in report["reason"]["latency_ms"]
    assert report["numerics"]["rel_err"] <= 1e-4


# --- tuning, the cache, --tuning-db (x86, golden cnn) --------------------------------------------------------------


@pytest.fixture(scope="module")
def tuned_cnn(saved_pt2, tmp_path_factory):
    """(manifest, bundle, cache) of the golden cnn tuned for x86-cpu-tvm with a tiny budget in a fresh cache."""
    out, cache = tmp_path_factory.mktemp("tuned-out"), tmp_path_factory.mktemp("tuned-cache")
    result = run_cli(
        "build",
        saved_pt2("cnn"),
        "--target",
        X86,
        "--tune-trials",
        TUNE_TRIALS,
        "--iters",
        5,
        "--out",
        out,
        "--json",
        env={"VDEPLOY_CACHE": str(cache)},
    )
    assert result.exit_code == 0, result.stderr
    return result.json, out / f"cnn-{X86}", cache


def test_tuning_records_go_to_the_cache_and_the_bundle(tuned_cnn):
    manifest, bundle, cache = tuned_cnn
    assert manifest["verdict"] == "pass" and manifest["measured"]["latency_ms"]["runs"] == 5
    assert elf_header(bundle / "model.so") == (2, ET_DYN, EM_X86_64)
    report = tuning(manifest)
    assert report["budget"] == TUNE_TRIALS and report["reused"] == 0
    assert report["trials"] > 0 and report["tuned"] > 0, report  # every trial failing leaves tuned == 0
    assert report["records_shipped"] == report["tasks"] - report["untuned"] == report["tuned"]
    assert Path(report["database"]).parent.parent == cache  # $VDEPLOY_CACHE/tvm-tuning/<key>
    assert (Path(report["database"]) / "database_tuning_record.json").stat().st_size > 0
    shipped = (bundle / "tuning" / "database_tuning_record.json").read_text().splitlines()
    assert len(shipped) == report["records_shipped"]  # the best record of each tuned task, one per line


def test_rebuild_with_the_same_cache_reuses_every_record(tuned_cnn, saved_pt2, tmp_path):
    first, first_bundle, cache = tuned_cnn
    result = run_cli(
        "build",
        saved_pt2("cnn"),
        "--target",
        X86,
        "--tune-trials",
        0,
        "--iters",
        3,
        "--out",
        tmp_path,
        "--json",
        env={"VDEPLOY_CACHE": str(cache)},
    )
    assert result.exit_code == 0, result.stderr
    before, after = tuning(first), tuning(result.json)
    assert after["database"] == before["database"] and after["tasks"] == before["tasks"]
    assert after["trials"] == after["tuned"] == 0
    assert after["reused"] == before["tasks"] - before["untuned"] == after["records_shipped"]
    assert after["untuned"] == before["untuned"]
    assert (tmp_path / f"cnn-{X86}" / "tuning" / "database_tuning_record.json").read_text() == (
        first_bundle / "tuning" / "database_tuning_record.json"
    ).read_text()
    for a, b in zip(bundle_outputs(first_bundle), bundle_outputs(tmp_path / f"cnn-{X86}")):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6 * float(np.abs(a).max()))


def test_tuning_db_seeds_a_fresh_cache_from_a_bundle(tuned_cnn, saved_pt2, tmp_path):
    first, first_bundle, _ = tuned_cnn
    cache = tmp_path / "other-cache"
    result = run_cli(
        "build",
        saved_pt2("cnn"),
        "--target",
        X86,
        "--tune-trials",
        0,
        "--tuning-db",
        first_bundle,
        "--iters",
        3,
        "--out",
        tmp_path / "out",
        "--json",
        env={"VDEPLOY_CACHE": str(cache)},
    )
    assert result.exit_code == 0, result.stderr
    report = tuning(result.json)
    assert Path(report["database"]).parent.parent == cache
    assert report["trials"] == report["tuned"] == 0
    assert report["reused"] == tuning(first)["records_shipped"] > 0
    assert (Path(report["database"]) / "database_tuning_record.json").stat().st_size > 0  # merged into the cache


def test_run_tvm_py_in_the_x86_bundle(tuned_cnn):
    _, bundle, _ = tuned_cnn
    proc = subprocess.run(
        [sys.executable, "run_tvm.py", "--iters", "3", "--warmup", "1"],
        cwd=bundle,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "numerics:" in proc.stdout and "latency:" in proc.stdout and "over 3 runs" in proc.stdout


def test_validate_x86_bundle_passes(tuned_cnn):
    _, bundle, _ = tuned_cnn
    result = run_cli("validate", bundle, "--json", "--iters", 5)
    assert result.exit_code == 0, result.stderr
    report = result.json
    assert report["verdict"] == "pass" and report["backend"] == "tvm" and report["latency_ms"]["runs"] == 5
    assert report["numerics"]["rel_err"] <= report["budgets"]["numerics"]["max_rel_err"]


# --- clear errors: exit 1, one line, no traceback, no bundle -------------------------------------------------------


def test_tuning_db_without_records_is_a_clean_error(saved_pt2, tmp_path):
    empty, out = tmp_path / "not-a-bundle", tmp_path / "out"
    empty.mkdir()
    (empty / "notes.txt").write_text("no records here\n")
    result = run_cli(
        "build",
        saved_pt2("cnn"),
        "--target",
        X86,
        "--tune-trials",
        0,
        "--tuning-db",
        empty,
        "--out",
        out,
        "--json",
        env={"VDEPLOY_CACHE": str(tmp_path / "cache")},
    )
    assert_clean_failure(result, out, "backend:", str(empty), "no TVM tuning records", "tuning/")


def test_missing_cross_compiler_is_a_clean_error(saved_pt2, tmp_path):
    def no_gcc(data):
        data["targets"][ARM]["options"]["cross_cc"] = "no-such-gcc"

    catalog, out = edited_catalog(tmp_path / "targets.yaml", no_gcc), tmp_path / "out"
    result = run_cli(
        "build",
        saved_pt2("cnn"),
        "--target",
        ARM,
        "--tune-trials",
        0,
        "--targets-file",
        catalog,
        "--out",
        out,
        "--json",
        env={"VDEPLOY_CACHE": str(tmp_path / "cache")},
    )
    assert_clean_failure(
        result, out, "backend:", "cross compiler no-such-gcc is not installed", "gcc-aarch64-linux-gnu"
    )


@pytest.mark.parametrize("how", ["--targets-file", "VDEPLOY_TARGETS"])
def test_tvm_section_on_another_backend_is_rejected(tmp_path, how):
    def tvm_on_ort(data):
        data["targets"]["onnxruntime-cpu"]["options"] = dict(data["targets"][X86]["options"])

    catalog = edited_catalog(tmp_path / "targets.yaml", tvm_on_ort)
    if how == "--targets-file":
        result = run_cli("targets", "--json", "--targets-file", catalog)
    else:
        result = run_cli("targets", "--json", env={"VDEPLOY_TARGETS": str(catalog)})
    assert_clean_failure(
        result,
        tmp_path / "no-out",
        "target:",
        str(catalog),
        "targets.onnxruntime-cpu",
        "options.target: Extra inputs are not permitted",  # ONNX Runtime's own options model has no TVM target
    )
    assert result.json["error"] == "target"


def test_console_report_prints_the_tuning_line(arm_vit):
    from rich.console import Console

    from vdeploy.report import print_build

    manifest, bundle = arm_vit
    console = Console(record=True, width=160)
    print_build(manifest, bundle, console)
    text = console.export_text()
    report = tuning(manifest)
    assert f"tuning: {report['tasks']} kernels, {report['reused']} from the tuning database" in text
    assert f"{report['untuned']} untuned" in text  # budget 0: every kernel keeps TVM's default code


def test_debug_on_a_tvm_target_checks_the_backend_without_tuning(saved_pt2, tmp_path):
    cache = tmp_path / "cache"
    result = run_cli("debug", saved_pt2("vit"), "--target", X86, "--json", env={"VDEPLOY_CACHE": str(cache)})
    assert result.exit_code == 0, result.stderr
    backend = result.json["stages"][-1]
    assert backend["name"] == "backend" and backend["ok"] and backend["rel_err"] <= 1e-4
    assert not list(cache.rglob("database_tuning_record.json")) or all(
        p.stat().st_size == 0 for p in cache.rglob("database_tuning_record.json")
    )  # nothing was measured
