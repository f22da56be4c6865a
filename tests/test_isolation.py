"""A runtime that crashes the process becomes a clear BackendError, not a dead CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from vdeploy.backends import get_backend
from vdeploy.backends.base import CompileJob
from vdeploy.errors import BackendError
from vdeploy.validate.isolate import run_artifact


def _matmul_model():
    w = helper.make_tensor("w", TensorProto.FLOAT, [64, 64], np.random.default_rng(0).standard_normal(4096))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [w],
    )
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 18)])


@pytest.fixture
def ort_artifact(tmp_path):
    return get_backend("onnxruntime").compile(CompileJob(_matmul_model(), "fp32", tmp_path))


def test_child_runs_and_times(ort_artifact, tmp_path):
    x = np.random.default_rng(1).standard_normal((3, 1, 64)).astype(np.float32)
    result = run_artifact(ort_artifact, tmp_path, {"x": x}, warmup=1, iters=5)
    weights = onnx.numpy_helper.to_array(_matmul_model().graph.initializer[0])
    np.testing.assert_allclose(result.outputs[0], x @ weights, rtol=1e-5, atol=1e-4)
    assert result.latency.runs == 5


def test_segfault_in_child_becomes_backend_error(ort_artifact, tmp_path):
    """A real SIGSEGV: sitecustomize in the child kills it before the runtime answers."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    x = np.zeros((1, 1, 64), np.float32)
    with pytest.raises(BackendError) as info:
        run_artifact(ort_artifact, tmp_path, {"x": x}, warmup=0, iters=1, env={"PYTHONPATH": str(hook)})
    assert "onnxruntime crashed with SIGSEGV" in info.value.one_line()


def _has_amx() -> bool:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "amx_tile" in flags


@pytest.mark.skipif(not _has_amx(), reason="the OpenVINO bf16 SIGILL needs an AMX CPU (ENVIRONMENT.md)")
def test_openvino_bf16_sigill_is_reported_with_the_workaround(tmp_path):
    """On this host OpenVINO's bf16/AMX path dies with SIGILL; the error names backend, signal and the fix."""
    backend = get_backend("openvino")
    artifact = backend.compile(CompileJob(_matmul_model(), "bf16", tmp_path))
    x = np.ones((1, 1, 64), np.float32)
    try:
        run_artifact(artifact, tmp_path, {"x": x}, warmup=1, iters=3)
    except BackendError as exc:
        line = exc.one_line()
        assert "openvino crashed with SIGILL" in line and "ONEDNN_MAX_CPU_ISA" in line
    else:
        pytest.skip("this AMX host runs OpenVINO bf16 without crashing")
