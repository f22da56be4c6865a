"""TensorRT targets: the strongly typed ONNX hand-off checked here, the engine only where TensorRT and a GPU are.

golden ViT / timm -> `vdeploy build --target jetson` -> model.onnx (parser ops, FP16 + FP32 islands), build_engine.sh
-> ORT numerics, verdict "unverified" -> `vdeploy validate`. Engine tests skip, saying why, where TensorRT cannot run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from types import SimpleNamespace

import onnx
import pytest
from onnx import TensorProto
from typer.testing import CliRunner

from tests.conftest import CliResult
from vdeploy.backends.tensorrt import (
    CACHE,
    ENGINE,
    build_script,
    engine_host,
    major_version,
    parser_errors,
    plan_build,
    trtexec_command,
    weakly_typed_command,
)
from vdeploy.cli import app
from vdeploy.errors import BackendError
from vdeploy.targets import OpId, load_catalog

EXACT = (
    "trtexec --onnx=model.onnx --stronglyTyped --saveEngine=model.engine --timingCacheFile=timing.cache --skipInference"
)
TRT_OPS = load_catalog().op_set("tensorrt-onnx-parser")
ISLAND_OPS = ("LayerNormalization", "Softmax")


def run_cli(*args) -> CliResult:
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return CliResult(result.exit_code, result.stdout, result.stderr)


def needs_deferral() -> str:
    """Why this host defers the engine build ("tensorrt not installed ..."); skips where it builds engines."""
    trt, why = engine_host()
    if trt is not None:
        pytest.skip(
            "TensorRT and a CUDA GPU are present here: the engine is built, nothing is deferred "
            "(the engine tests below cover this host)"
        )
    return why


@pytest.fixture(scope="module")
def jetson_vit(saved_pt2, tmp_path_factory):
    """(CliResult of `vdeploy build vit.pt2 --target jetson --json`, bundle dir), built once."""
    out = tmp_path_factory.mktemp("jetson")
    result = run_cli("build", saved_pt2("vit"), "--target", "jetson", "--out", out, "--json")
    return result, out / "vit-jetson-orin-nano"


def value_types(model) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    types = {t.name: t.data_type for t in model.graph.initializer}
    for info in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        types[info.name] = info.type.tensor_type.elem_type
    return types


def check_strongly_typed_fp16(path) -> None:
    """Only parser ops; FP16 weights; every LayerNormalization/Softmax reads and writes FP32 (the islands)."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)  # types consistent node by node: a strongly typed graph
    assert {OpId(n.domain, n.op_type) for n in model.graph.node} <= TRT_OPS
    types = value_types(model)
    outputs = {o.name for o in model.graph.output}
    weights = {
        v
        for n in model.graph.node
        if n.op_type in ("MatMul", "Gemm", "Conv") and not set(n.output) & outputs
        for v in n.input[1:]
        if v in {t.name for t in model.graph.initializer}
    }
    assert weights and {types[w] for w in weights} == {TensorProto.FLOAT16}  # all but the logits layer in FP16
    islands = [n for n in model.graph.node if n.op_type in ISLAND_OPS]
    assert islands
    for node in islands:
        assert {types[v] for v in (*node.input, *node.output) if v} == {TensorProto.FLOAT}, node.name
    assert any(n.op_type == "Cast" and n.attribute[0].i == TensorProto.FLOAT16 for n in model.graph.node)


def check_build_script(bundle) -> None:
    script = bundle / "build_engine.sh"
    assert os.access(script, os.X_OK)
    lines = script.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash" and "set -euo pipefail" in lines
    assert [line for line in lines if line.startswith("trtexec ")] == [EXACT]
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


# --- the deferred Jetson build of the golden ViT ------------------------------------------------------------------


def test_jetson_build_is_unverified_because_the_engine_is_deferred(jetson_vit):
    why = needs_deferral()
    result, bundle = jetson_vit
    assert result.exit_code == 0, result.stderr
    manifest = result.json
    assert manifest["target"] == "jetson-orin-nano" and manifest["precision"] == "fp16"
    assert manifest["verdict"] == "unverified"
    assert f"artifact: {why}" in manifest["reason"]["unverified"] and "deferred to build_engine.sh" in why
    assert manifest["artifact"]["deferred"] == why and manifest["artifact"]["entry"] == "model.onnx"
    assert not (bundle / ENGINE).exists() and not (bundle / CACHE).exists()  # nothing pretends to be built
    names = {f["path"] for f in manifest["files"]}
    assert {"model.onnx", "build_engine.sh", "reference_io.npz", "HANDOFF.txt"} <= names


def test_jetson_onnx_is_strongly_typed_fp16_with_fp32_islands(jetson_vit):
    _, bundle = jetson_vit
    check_strongly_typed_fp16(bundle / "model.onnx")


def test_build_engine_script_holds_exactly_the_trtexec_command(jetson_vit):
    _, bundle = jetson_vit
    check_build_script(bundle)
    assert (bundle / "build_engine.sh").read_text() == build_script("fp16")


def test_build_engine_script_runs_trtexec_from_its_own_directory(jetson_vit, tmp_path):
    """A stand-in trtexec on PATH records its argv and cwd: the script passes exactly the documented flags."""
    needs_deferral()
    _, bundle = jetson_vit
    fake = tmp_path / "bin" / "trtexec"
    fake.parent.mkdir()
    fake.write_text(f'#!/usr/bin/env bash\necho "$PWD" > {tmp_path}/cwd\nprintf "%s\\n" "$@" > {tmp_path}/argv\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(bundle / "build_engine.sh")], cwd=tmp_path, env=env)
    assert done.returncode == 0
    assert (tmp_path / "cwd").read_text().strip() == str(bundle)
    assert (tmp_path / "argv").read_text().split() == EXACT.split()[1:]


def test_jetson_latency_and_power_are_labelled_estimates(jetson_vit):
    needs_deferral()
    manifest = jetson_vit[0].json
    latency = manifest["measured"]["latency_ms"]
    assert latency["source"] == "estimate" and latency["runs"] == 0
    assert manifest["measured"]["power_w"]["source"] == "estimate"
    assert manifest["estimate"]["model"] == "roofline"
    unverified = manifest["reason"]["unverified"]
    assert any(u.startswith("latency_ms: only estimated") for u in unverified)
    assert any(u.startswith("power_w: only estimated") for u in unverified)


def test_jetson_numerics_pass_the_fp16_gate_in_onnx_runtime(jetson_vit):
    manifest = jetson_vit[0].json
    gate = load_catalog().get("jetson").spec.tolerances
    numerics = manifest["numerics"]
    assert manifest["budgets"]["numerics"]["max_rel_err"] == gate["fp16"].max_rel_err
    assert numerics["rel_err"] <= gate["fp16"].max_rel_err and numerics["cosine"] >= gate["fp16"].min_cosine
    assert numerics["rel_err"] > 1e-6  # really FP16: an FP32 graph would agree to ~1e-7
    assert not manifest["violations"]


def test_validate_on_this_host_keeps_the_bundle_unverified(jetson_vit):
    why = needs_deferral()
    _, bundle = jetson_vit
    result = run_cli("validate", bundle, "--json")
    assert result.exit_code == 0, result.stderr
    report = result.json
    assert report["verdict"] == "unverified" and report["latency_ms"] is None
    assert f"artifact: {why}" in report["reason"]["unverified"]
    assert "no TensorRT engine" in report["reason"]["latency_ms"]
    assert report["numerics"]["rel_err"] <= report["budgets"]["numerics"]["max_rel_err"]


def test_nvidia_gpu_without_hardware_figures_reports_nulls_with_reasons(saved_pt2, tmp_path):
    needs_deferral()
    result = run_cli("build", saved_pt2("vit"), "--target", "nvidia-gpu", "--out", tmp_path, "--json")
    assert result.exit_code == 0, result.stderr
    manifest = result.json
    assert manifest["verdict"] == "unverified" and manifest["estimate"] is None
    assert manifest["measured"]["latency_ms"] is None and "no TensorRT engine" in manifest["reason"]["latency_ms"]
    assert manifest["measured"]["power_w"] is None and manifest["reason"]["power_w"]


def test_jetson_int8_is_symmetric_qdq(saved_pt2, tmp_path):
    result = run_cli(
        "build", saved_pt2("vit"), "--target", "jetson", "--precision", "int8", "--out", tmp_path, "--json"
    )
    assert result.exit_code == 0, result.stderr
    bundle = tmp_path / "vit-jetson-orin-nano"
    model = onnx.load(str(bundle / "model.onnx"))
    assert {OpId(n.domain, n.op_type) for n in model.graph.node} <= TRT_OPS
    initializers = {t.name: t for t in model.graph.initializer}
    zero_points = [
        initializers[n.input[2]]
        for n in model.graph.node
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2
    ]
    assert zero_points and all(not onnx.numpy_helper.to_array(z).any() for z in zero_points)  # TensorRT: zp 0
    assert {z.data_type for z in zero_points} == {TensorProto.INT8}
    assert [line for line in (bundle / "build_engine.sh").read_text().splitlines() if line.startswith("trtexec ")] == [
        EXACT
    ]


# --- pure functions: the script writer and the version plan ------------------------------------------------------


@pytest.mark.parametrize("precision, weak", [("fp16", "--fp16"), ("int8", "--int8 --fp16"), ("fp32", "")])
def test_build_script_per_precision(precision, weak):
    script = build_script(precision)
    strong = trtexec_command(precision)
    assert strong.startswith(
        "trtexec --onnx=model.onnx --stronglyTyped --saveEngine=model.engine --timingCacheFile=timing.cache"
    )
    assert ("--noTF32" in strong) == (precision == "fp32")
    assert "--fp16" not in strong and "--int8" not in strong  # precision lives in the ONNX
    assert f"#   {weakly_typed_command(precision)}" in script.splitlines()
    assert weakly_typed_command(precision) == " ".join(
        [
            "trtexec --onnx=model.onnx",
            *([weak] if weak else []),
            "--saveEngine=model.engine --timingCacheFile=timing.cache --skipInference",
        ]
    )
    assert script.splitlines()[-1] == strong and 'cd "$(dirname "$0")"' in script


@pytest.mark.parametrize(
    "version, has_flag, strongly, network, builder",
    [
        ("11.0.0.8", True, True, ("STRONGLY_TYPED",), ()),  # 11: the flag is accepted and ignored
        ("11.1.0", False, True, (), ()),  # 11 without the flag: strongly typed regardless
        ("10.3.0", True, True, ("STRONGLY_TYPED",), ()),  # JetPack 6: opt-in strong typing is used
        ("8.6.2", False, False, ("EXPLICIT_BATCH",), ("FP16",)),  # JetPack 5: weakly typed + builder flags
    ],
)
def test_plan_build_detects_the_tensorrt_version(version, has_flag, strongly, network, builder):
    plan = plan_build(version, "fp16", has_flag)
    assert (plan.strongly_typed, plan.network_flags, plan.builder_flags) == (strongly, network, builder)


def test_plan_build_precision_flags_and_tf32():
    assert plan_build("8.6.1", "int8", False).builder_flags == ("INT8", "FP16")
    assert plan_build("10.3.0", "fp32", True).clear_flags == ("TF32",)
    assert plan_build("10.3.0", "fp16", True).clear_flags == ()
    assert major_version("10.15.1.29") == 10
    with pytest.raises(BackendError):
        major_version("unknown")


def test_parser_errors_name_the_node():
    def error(node, name, op, desc):  # the IParserError accessors parser_errors() reads
        return SimpleNamespace(node=lambda: node, node_name=lambda: name, node_operator=lambda: op, desc=lambda: desc)

    errors = [error(7, "/blocks.0/attn/Gather", "Gather", "unsupported axis"), error(-1, "", "", "bad model")]
    parser = SimpleNamespace(num_errors=len(errors), get_error=errors.__getitem__)
    assert parser_errors(parser) == ["node 7 /blocks.0/attn/Gather Gather: unsupported axis", "graph: bad model"]


# --- engine paths: only where TensorRT imports and sees a GPU -------------------------------------------------------


@pytest.fixture
def trt():
    module = pytest.importorskip(
        "tensorrt",
        reason="tensorrt is not installed (it cannot be on these machines: "
        "shared/ENVIRONMENT.md); engine tests run on a Jetson/GPU host",
    )
    if engine_host()[0] is None:
        pytest.skip(f"tensorrt {module.__version__} imports but sees no CUDA GPU: no engine can be built here")
    return module


def test_engine_build_and_run_on_a_tensorrt_host(trt, saved_pt2, tmp_path):
    result = run_cli("build", saved_pt2("vit"), "--target", "nvidia-gpu", "--out", tmp_path, "--json", "--iters", 5)
    assert result.exit_code in (0, 3), result.stderr
    manifest = result.json
    bundle = tmp_path / "vit-nvidia-gpu"
    assert manifest["artifact"]["entry"] == ENGINE and not manifest["artifact"]["deferred"]
    assert (bundle / ENGINE).stat().st_size > 0 and (bundle / CACHE).stat().st_size > 0
    assert manifest["measured"]["latency_ms"]["runs"] == 5 and "source" not in manifest["measured"]["latency_ms"]
    assert manifest["numerics"]["rel_err"] <= manifest["budgets"]["numerics"]["max_rel_err"]


def test_validate_builds_the_deferred_engine_on_a_tensorrt_host(trt, jetson_vit, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(jetson_vit[1], bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    if not manifest["artifact"]["deferred"]:
        pytest.skip("the module's bundle was built on this TensorRT host: nothing was deferred")
    result = run_cli("validate", bundle, "--json", "--iters", 5)
    assert result.exit_code in (0, 3), result.stderr
    report = result.json
    assert report["artifact"]["entry"] == ENGINE and (bundle / ENGINE).exists() and (bundle / CACHE).exists()
    assert report["latency_ms"]["runs"] == 5
    assert not any(u.startswith("artifact:") for u in report["reason"].get("unverified", []))


# --- real timm architectures (slow) ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["deit_tiny_patch16_224", "swin_tiny_patch4_window7_224", "mobilevit_xs"])
def test_timm_models_for_jetson(arch, tmp_path):
    from vdeploy.timm_compat import import_timm

    try:
        import_timm()
    except ImportError as exc:
        pytest.skip(f"timm not importable: {exc}")
    result = run_cli("build", f"timm:{arch}", "--target", "jetson", "--out", tmp_path, "--json")
    assert result.exit_code == 0, result.stderr
    manifest = result.json
    bundle = tmp_path / f"{arch}-jetson-orin-nano"
    check_strongly_typed_fp16(bundle / "model.onnx")
    check_build_script(bundle)
    gate = manifest["budgets"]["numerics"]
    numerics = manifest["numerics"]
    assert numerics["rel_err"] <= gate["max_rel_err"] and numerics["cosine"] >= gate["min_cosine"]
    report = run_cli("validate", bundle, "--json")
    assert report.exit_code == 0, report.stderr
    trt, why = engine_host()
    if trt is None:
        assert manifest["verdict"] == report.json["verdict"] == "unverified"
        assert manifest["artifact"]["deferred"] == why and f"artifact: {why}" in report.json["reason"]["unverified"]
        assert manifest["measured"]["latency_ms"]["source"] == manifest["measured"]["power_w"]["source"] == "estimate"
