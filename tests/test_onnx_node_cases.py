"""ONNX's backend node tests (regenerated with onnx.backend.test.case.node) through legalization, every target.

(case, target) -> tests/onnx_node_cases.run_case -> Outcome (legal / fallback / unknown / refused, ops left, reason,
numerics in ORT) == expected(case, target), an explicit table below: per family, per target, what must happen.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from tests.onnx_node_cases import run_case, selected
from vdeploy.errors import UnsupportedOpsError
from vdeploy.graph_passes.coverage import coverage_of
from vdeploy.graph_passes.legalize import check_legal, legalize, usable_ops
from vdeploy.targets import load_catalog

ONNX_ATTENTION_TARGETS = {"onnxruntime-cpu", "x86-cpu", "jetson-orin-nano", "nvidia-gpu"}  # profiles list Attention
FALLBACK_TARGETS = {"rk3588-npu", "ethos-u55"}

# Attention nodes legalization leaves as they are (attention_onnx.py says why): a KV cache (past/present), a
# boolean mask, or the qk_matmul_output used as a graph output.
ATTENTION_KEPT = {
    "test_attention_23_boolmask_fullymasked_row_nan_robustness",
    "test_attention_23_fullymasked_qk_matmul_output_mode3_zero",
    "test_attention_3d_diff_heads_with_past_and_present",
    "test_attention_3d_gqa_with_past_and_present",
    "test_attention_3d_with_past_and_present",
    "test_attention_3d_with_past_and_present_qk_matmul",
    "test_attention_3d_with_past_and_present_qk_matmul_bias",
    "test_attention_3d_with_past_and_present_qk_matmul_softcap",
    "test_attention_3d_with_past_and_present_qk_matmul_softmax",
    "test_attention_4d_attn_mask_bool",
    "test_attention_4d_attn_mask_bool_4d",
    "test_attention_4d_diff_heads_with_past_and_present",
    "test_attention_4d_diff_heads_with_past_and_present_mask3d",
    "test_attention_4d_diff_heads_with_past_and_present_mask4d",
    "test_attention_4d_gqa_with_past_and_present",
    "test_attention_4d_gqa_with_past_and_present_fp16",
    "test_attention_4d_with_past_and_present",
    "test_attention_4d_with_past_and_present_qk_matmul",
    "test_attention_4d_with_past_and_present_qk_matmul_bias",
    "test_attention_4d_with_past_and_present_qk_matmul_bias_3d_mask",
    "test_attention_4d_with_past_and_present_qk_matmul_bias_3d_mask_causal",
    "test_attention_4d_with_past_and_present_qk_matmul_bias_4d_mask",
    "test_attention_4d_with_past_and_present_qk_matmul_bias_4d_mask_causal",
    "test_attention_4d_with_qk_matmul",
    "test_attention_4d_with_qk_matmul_bias",
    "test_attention_4d_with_qk_matmul_softcap",
    "test_attention_4d_with_qk_matmul_softmax",
}
SOFTMAX_PARTS = ("Div", "Exp", "ReduceMax", "ReduceSum", "Sub")  # the decomposed Softmax, unknown on hailo-8
LEGAL = ("legal", ())
SAME_AS = {  # targets whose op profile is another's: they share its expectations
    "rk3576-npu": "rk3588-npu",  # the same compiler (librknnc 2.5.0) and op support list
    "rk3566-npu": "rk3588-npu",
    "ethos-u55-128": "ethos-u55",
    "ethos-u65-256": "ethos-u55",
    "ethos-u85-256": "ethos-u55",
    # ExecuTorch targets carry the onnxruntime-cpu profile (coverage only: they compile the PyTorch program)
    "arm-cortex-a76-xnnpack": "onnxruntime-cpu",
    "x86-cpu-xnnpack": "onnxruntime-cpu",
}


def expected(name: str, target: str) -> tuple[str, tuple[str, ...] | None]:
    """(outcome kind, ops left outside the op set; None = not pinned, checked by the attention rule below)."""
    target = SAME_AS.get(target, target)
    if name.startswith("test_attention"):
        if name in ATTENTION_KEPT:
            if target in ONNX_ATTENTION_TARGETS:
                return LEGAL
            return ("fallback" if target in FALLBACK_TARGETS else "refused"), ("Attention",)
        return ("unknown", None) if target == "hailo-8" else LEGAL  # decomposed: MatMul/Softmax parts are unknown
    if name.startswith("test_layer_normalization"):  # W, B are graph inputs here: no constant scale to decompose
        return {
            "ethos-u55": ("fallback", ("LayerNormalization",)),
            "hailo-8": ("unknown", ("LayerNormalization",)),
        }.get(target, LEGAL)
    if name.startswith("test_batchnorm"):  # mean/var are graph inputs: nothing to fold
        return {
            "ethos-u55": ("fallback", ("BatchNormalization",)),
            "hailo-8": ("unknown", ("BatchNormalization",)),
        }.get(target, LEGAL)
    if name.startswith("test_softmax"):
        return ("unknown", SOFTMAX_PARTS) if target == "hailo-8" else LEGAL
    if name.startswith(("test_gelu", "test_erf", "test_gemm")):
        return LEGAL  # hailo-8, ethos-u55: GELU / Erf through the documented approximations
    if name == "test_matmulinteger":
        return {
            "jetson-orin-nano": ("refused", ("MatMulInteger",)),
            "nvidia-gpu": ("refused", ("MatMulInteger",)),
            "rk3588-npu": ("fallback", ("MatMulInteger",)),
            "ethos-u55": ("fallback", ("MatMulInteger",)),
            "hailo-8": ("refused", ("MatMulInteger",)),
        }.get(target, LEGAL)
    if name == "test_matmul_bcast":  # split into rank 3 everywhere without MatMulRank4; b's batch dims are Expanded
        return {"ethos-u55": ("fallback", ("Expand",)), "hailo-8": ("unknown", ("Expand", "MatMul", "Reshape"))}.get(
            target, LEGAL
        )
    if name in ("test_matmul_4d", "test_matmul_4d_1d"):
        return ("unknown", ("MatMul", "Reshape")) if target == "hailo-8" else LEGAL
    if name.startswith("test_matmul"):
        return ("unknown", ("MatMul",)) if target == "hailo-8" else LEGAL
    raise AssertionError(f"no expectation for {name}")


@functools.lru_cache(maxsize=1)
def targets():
    return list(load_catalog())


@pytest.fixture(scope="module")
def cases(onnx_node_cases):
    picked = selected(onnx_node_cases)
    assert len(picked) > 100 and {"test_matmul_bcast", "test_attention_3d_gqa_causal"} <= {c.name for c in picked}
    return picked


@pytest.mark.parametrize("target", [t.name for t in targets()])
def test_node_cases_legalize_or_are_refused(cases, target):
    spec = load_catalog().get(target)
    wrong = []
    for case in cases:
        kind, left = expected(case.name, target)
        outcome = run_case(case, spec)
        if outcome.kind != kind or (left is not None and outcome.left != left):
            wrong.append(f"{case.name}: got {outcome.kind} {outcome.left}, expected {kind} {left}")
        elif kind == "refused":
            assert all(op in outcome.reason for op in left) and "fallback" in outcome.reason, outcome.reason
        elif outcome.max_err > 1:  # numerics hold for every graph that is not refused
            wrong.append(f"{case.name}: {outcome.max_err:.2f} x the tolerance")
        if case.name.startswith("test_attention") and kind == "unknown":
            assert "MatMul" in outcome.left and set(outcome.left) <= {str(op) for op in spec.unknown}, outcome.left
    assert not wrong, "\n".join(wrong)


def _matmul_model(a_shape, b_shape) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["y"])],
        "mm",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, a_shape),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, b_shape),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


@pytest.mark.parametrize("target", ["rk3588-npu", "ethos-u55"])
def test_rank4_matmul_never_native_without_the_capability(target):
    """A rank-4 MatMul that cannot be split (batch dim unknown) is left, and coverage says so: not 'native'."""
    spec = load_catalog().get(target)
    proto = _matmul_model(["n", 2, 3, 4], ["n", 2, 4, 5])
    model = ir.serde.deserialize_model(proto)
    result = legalize(model, spec.op_set, fallback=spec.spec.fallback)
    assert result.unsupported == ("MatMul",)
    legal = ir.serde.serialize_model(result.model)
    assert coverage_of(proto, legal, result, spec.op_set).status["MatMul"].value == "fallback"
    with pytest.raises(UnsupportedOpsError, match="MatMulRank4"):
        check_legal(result.model, usable_ops(spec.op_set, result.model.opset_imports), fallback=False)


def test_broadcast_matmul_split_is_rank3_and_exact():
    spec = load_catalog().get("rk3588-npu")
    proto = _matmul_model([3, 1, 3, 4], [1, 2, 4, 2])
    result = legalize(ir.serde.deserialize_model(proto), spec.op_set)
    legal = ir.serde.serialize_model(result.model)
    inferred = onnx.shape_inference.infer_shapes(legal)
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*inferred.graph.value_info, *inferred.graph.input]}
    assert all(ranks[i] <= 3 for n in inferred.graph.node if n.op_type == "MatMul" for i in n.input)
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 1, 3, 4), np.float32), rng.standard_normal((1, 2, 4, 2), np.float32)
    session = ort.InferenceSession(legal.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"a": a, "b": b})
    np.testing.assert_allclose(y, np.matmul(a, b), rtol=1e-5, atol=1e-6)
