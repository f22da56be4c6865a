"""The aarch64 TVM runner under qemu-user: tiny ONNX graphs cross-compiled with TVM, run, and checked against numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from vdeploy.backends.tvm_qemu import QemuSession, runner_problem, write_params  # noqa: E402
from vdeploy.errors import BackendError  # noqa: E402

pytestmark = pytest.mark.skipif(runner_problem() is not None, reason=str(runner_problem()))

TARGET = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76", "mattr": ["+neon"], "num-cores": 4}
RNG = np.random.default_rng(0)
W = RNG.standard_normal((8, 16)).astype(np.float32)
B = RNG.standard_normal(16).astype(np.float32)


def onnx_model(nodes, outputs, initializers):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 16]) for name in outputs],
        [numpy_helper.from_array(v, k) for k, v in initializers.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def build(model, out_dir: Path, lift: bool) -> tuple[Path, Path]:
    """Cross-compile for aarch64; write model.so and params.bin (the weights in main's argument order)."""
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    mod, params = relax.frontend.detach_params(from_onnx(model, keep_params_in_input=True))
    target = tvm.target.Target(TARGET)
    if lift:  # weight preprocessing moves into main_transform_params, as in the tuned builds
        with target:
            mod = relax.transform.DecomposeOpsForInference()(mod)
            mod = relax.transform.LiftTransformParams()(mod)
            mod = relax.transform.FoldConstant()(mod)
        assert "main_transform_params" in [gv.name_hint for gv in mod.functions]
    lib, params_bin = out_dir / "model.so", out_dir / "params.bin"
    tvm.compile(mod, target=target).export_library(str(lib), cc="aarch64-linux-gnu-gcc")
    write_params(params_bin, [p.numpy() for p in params["main"]])
    return lib, params_bin


def relu(v):
    return np.maximum(v, 0)


@pytest.fixture(scope="module")
def samples():
    return [{"x": RNG.standard_normal((2, 8)).astype(np.float32)} for _ in range(3)]


def test_matmul_add_relu(tmp_path, samples):
    model = onnx_model(
        [
            helper.make_node("MatMul", ["x", "W"], ["m"]),
            helper.make_node("Add", ["m", "B"], ["a"]),
            helper.make_node("Relu", ["a"], ["y"]),
        ],
        ["y"],
        {"W": W, "B": B},
    )
    lib, params = build(model, tmp_path, lift=False)
    with QemuSession(lib, params, ["x"], num_threads=1) as session:
        results = session.run_many(samples, warmup=1, iters=2)
        assert len(session.last_latency_ms) == 2 and all(t > 0 for t in session.last_latency_ms)
        single = session.run(samples[1])
    assert len(results) == 3
    for sample, outs in zip(samples, results):
        assert len(outs) == 1
        np.testing.assert_allclose(outs[0], relu(sample["x"] @ W + B), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(single[0], results[1][0])


def test_transformed_params_and_tuple_output(tmp_path, samples):
    # Gemm(transB=1) imports as permute_dims(W); LiftTransformParams moves it (and reorders the weights)
    # into main_transform_params, which the runner calls once before main.
    model = onnx_model(
        [
            helper.make_node("Gemm", ["x", "Wt", "B"], ["a"], transB=1),
            helper.make_node("Relu", ["a"], ["y"]),
            helper.make_node("Sigmoid", ["a"], ["z"]),
        ],
        ["y", "z"],
        {"Wt": np.ascontiguousarray(W.T), "B": B},
    )
    lib, params = build(model, tmp_path, lift=True)
    results = QemuSession(lib, params, ["x"], num_threads=2).run_many(samples)
    for sample, outs in zip(samples, results):
        a = sample["x"] @ W + B
        assert len(outs) == 2
        np.testing.assert_allclose(outs[0], relu(a), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(outs[1], 1 / (1 + np.exp(-a)), rtol=1e-5, atol=1e-6)


def test_corrupt_module_is_a_backend_error(tmp_path, samples):
    lib, params = tmp_path / "model.so", tmp_path / "params.bin"
    lib.write_bytes(b"\x7fELF not really a shared library")
    write_params(params, [W, B])
    with pytest.raises(BackendError) as info:
        QemuSession(lib, params, ["x"], num_threads=1).run_many(samples)
    assert "cannot load module" in info.value.message and str(lib) in info.value.message
    assert "\n" not in info.value.message
