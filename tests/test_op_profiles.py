"""Op profiles in targets.yaml, checked against what can be checked on this machine.

targets.yaml op_profiles -> Catalog.op_set(name) -> compared with:
  onnxruntime-cpu : the installed onnxruntime CPU kernel registry
  openvino-cpu    : openvino.convert_model on single-node ONNX models (accepted iff listed)
  NPU profiles    : must lack at least one of the ops legalization decomposes for them
  every profile   : resolves, and every op name is a real ONNX / ONNX Runtime contrib schema
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vdeploy.graph_passes.rules.matmul import MATMUL_RANK4
from vdeploy.targets import OpId, load_catalog

NPU_PROFILES = ("rk3588-npu", "hailo-8", "ethos-u55")
TRANSFORMER_OPS = ("LayerNormalization", "Gelu", "Erf", "Softmax")

# Capabilities legalization reads (pseudo-ops in domain vdeploy.capability); any other name there is a typo.
CAPABILITIES = frozenset({MATMUL_RANK4})

# Op names that an op profile may list although neither onnx 1.23 nor onnxruntime 1.31 defines a schema for them:
# the OpenVINO ONNX frontend registers them (supported_ops.md lists them).
NO_SCHEMA_ALLOWED = {
    OpId("", "ATen"),
    OpId("", "ConstantFill"),
    OpId("", "IsFinite"),
    OpId("com.microsoft", "SimplifiedLayerNormalization"),
}


@functools.lru_cache(maxsize=1)
def catalog():
    return load_catalog()


# --------------------------------------------------------------------------------------------------------------
# onnxruntime-cpu == installed ORT CPU kernel registry
# --------------------------------------------------------------------------------------------------------------


def test_onnxruntime_cpu_profile_matches_installed_kernel_registry():
    from onnxruntime.capi.onnxruntime_pybind11_state import get_all_opkernel_def

    registry = set()
    for kernel in get_all_opkernel_def():
        if kernel.provider != "CPUExecutionProvider":
            continue
        domain = "" if kernel.domain in ("", "ai.onnx") else kernel.domain
        if domain not in ("", "com.microsoft") or kernel.op_name in ("MemcpyFromHost", "MemcpyToHost"):
            continue
        registry.add(OpId(domain, kernel.op_name))
    assert len(registry) > 200, "kernel registry unexpectedly small; did the filter break?"

    profile = {op for op in catalog().op_set("onnxruntime-cpu") if op.domain != "vdeploy.capability"}
    missing_from_profile = sorted(map(str, registry - profile))
    not_in_registry = sorted(map(str, profile - registry))
    assert missing_from_profile == [], f"ORT CPU kernels missing from the profile: {missing_from_profile}"
    # Constant has no kernel (ORT folds it into an initializer); the other ops without a kernel must be function
    # ops ORT expands (scripts/probe_ort_function_ops.py; test_function_ops_in_the_profile_run_in_ort runs them).
    from scripts.probe_ort_function_ops import function_ops

    without_kernel = set(not_in_registry) - {"Constant"}
    assert without_kernel <= function_ops(), f"not function ops: {sorted(without_kernel - function_ops())}"
    assert {"CastLike", "HardSwish", "GroupNormalization"} <= without_kernel


def test_function_ops_in_the_profile_run_in_ort(onnx_node_cases):
    """Each function op the onnxruntime-cpu profile lists without a kernel runs one of its onnx node cases in ORT
    and matches the expected outputs; a function op ORT cannot run (Bernoulli) is not listed."""
    from scripts.probe_ort_function_ops import kernel_ops, runs_in_ort

    profile = {op.op_type for op in catalog().op_set("onnxruntime-cpu") if op.domain == ""}
    listed = profile - kernel_ops() - {"Constant"}
    for op in sorted(listed):
        cases = [
            c for c in onnx_node_cases if "_expanded" not in c.name and {n.op_type for n in c.model.graph.node} == {op}
        ]
        assert cases and any(runs_in_ort(c) for c in cases), op
    assert "Bernoulli" not in profile


# --------------------------------------------------------------------------------------------------------------
# openvino-cpu == what the installed OpenVINO ONNX frontend converts
# --------------------------------------------------------------------------------------------------------------

F = TensorProto.FLOAT
X4 = (1, 4, 8, 8)  # NCHW activation used by most cases


class Case(NamedTuple):
    op: str
    inputs: tuple  # each: tuple shape (float input), ("bool"|"int64", shape) typed input, np.ndarray (initializer)
    attrs: dict = {}
    domain: str = ""
    opset: int = 18
    outputs: tuple = ("y",)
    output_type: int = F
    output_shape: tuple | None = None  # only where ONNX shape inference cannot work it out

    @property
    def op_id(self) -> OpId:
        return OpId(self.domain, self.op)

    @property
    def label(self) -> str:
        return str(self.op_id)


def f32(*shape, value=None):
    rng = np.random.default_rng(0)
    return np.full(shape, value, np.float32) if value is not None else rng.standard_normal(shape).astype(np.float32)


def i64(*values):
    return np.array(values, dtype=np.int64)


def _cases() -> list[Case]:
    C4, S = X4[1], (1, 16, 32)  # channels; (batch, tokens, hidden) for transformer ops
    return [
        # ---- convolution / pooling / normalisation (CNN) ----
        Case("Conv", (X4, f32(8, C4, 3, 3), f32(8)), {"pads": [1, 1, 1, 1]}),
        Case("ConvTranspose", (X4, f32(C4, 2, 2, 2)), {"strides": [2, 2]}),
        Case("BatchNormalization", (X4, f32(C4), f32(C4), f32(C4), f32(C4, value=1.0))),
        Case("InstanceNormalization", (X4, f32(C4), f32(C4))),
        Case("GroupNormalization", (X4, f32(C4), f32(C4)), {"num_groups": 2}, opset=21, output_shape=X4),
        Case("MaxPool", (X4,), {"kernel_shape": [2, 2], "strides": [2, 2]}),
        Case("AveragePool", (X4,), {"kernel_shape": [2, 2], "strides": [2, 2]}),
        Case("LpPool", (X4,), {"kernel_shape": [2, 2], "strides": [2, 2]}, opset=22),
        Case("GlobalAveragePool", (X4,)),
        Case("Resize", (X4, "", f32(4, value=1.0) * np.array([1, 1, 2, 2], np.float32)), {"mode": "linear"}),
        # ---- transformer ops ----
        Case("MatMul", ((1, 2, 16, 8), (1, 2, 8, 16))),  # rank-4 batched, both operands activations
        Case("Gemm", ((2, 8), f32(8, 4), f32(4))),
        Case("LayerNormalization", (S, f32(32), f32(32)), {"axis": -1}),
        Case("Softmax", (X4,), {"axis": -1}),
        Case("Erf", (X4,)),
        Case("Gelu", (X4,), opset=20),
        Case("Attention", ((1, 2, 16, 8), (1, 2, 16, 8), (1, 2, 16, 8)), opset=23),
        # ---- elementwise / activations ----
        Case("Add", (X4, X4)),
        Case("Sub", (X4, X4)),
        Case("Mul", (X4, X4)),
        Case("Div", (X4, X4)),
        Case("Pow", (X4, f32(value=2.0))),
        Case("Sqrt", (X4,)),
        Case("Sigmoid", (X4,)),
        Case("Tanh", (X4,)),
        Case("Relu", (X4,)),
        Case("HardSwish", (X4,)),
        Case("Clip", (X4, f32(value=0.0), f32(value=6.0))),
        Case("Where", (("bool", X4), X4, X4)),
        Case("Swish", (X4,), opset=24),
        # ---- data movement ----
        Case("Transpose", (X4,), {"perm": [0, 2, 3, 1]}),
        Case("Reshape", (X4, i64(1, 4, 64))),
        Case("Flatten", (X4,), {"axis": 1}),
        Case("Concat", (X4, X4), {"axis": 1}),
        Case("Slice", (X4, i64(0), i64(2), i64(1))),
        Case("Split", (X4, i64(2, 2)), {"axis": 1}, outputs=("y0", "y1")),
        Case("Gather", (X4, i64(0, 2)), {"axis": 1}),
        Case("Squeeze", ((1, 4, 1, 8), i64(2))),
        Case("Unsqueeze", (X4, i64(0))),
        Case("Expand", ((1, 4, 1, 1), i64(1, 4, 8, 8))),
        Case("ReduceMean", (X4, i64(-1)), {"keepdims": 1}),
        Case("Shape", (X4,), output_type=TensorProto.INT64),
        # ---- ONNX Runtime contrib ops that exporters/optimisers emit for vision transformers ----
        Case("Gelu", (X4,), domain="com.microsoft"),
        Case("BiasGelu", (S, f32(32)), domain="com.microsoft"),
        Case("FastGelu", (S, f32(32)), domain="com.microsoft"),
        Case("SkipLayerNormalization", (S, S, f32(32), f32(32)), {"epsilon": 1e-5}, domain="com.microsoft"),
        Case(
            "FusedConv",
            (X4, f32(8, C4, 3, 3), f32(8)),
            {"activation": "Relu", "pads": [1, 1, 1, 1]},
            domain="com.microsoft",
        ),
        Case("FusedGemm", ((2, 8), f32(8, 4), f32(4)), {"activation": "Relu"}, domain="com.microsoft"),
        Case("MultiHeadAttention", (S, S, S), {"num_heads": 2}, domain="com.microsoft"),
        # ---- ops the profile omits (OpenVINO 2026.4.1 has no conversion rule for them) ----
        Case("DeformConv", (X4, f32(8, C4, 3, 3), f32(1, 18, 6, 6)), opset=22),
        Case("MaxUnpool", ((1, 4, 4, 4), ("int64", (1, 4, 4, 4))), {"kernel_shape": [2, 2], "strides": [2, 2]}),
        Case("Det", ((2, 3, 3),), opset=22),
        Case("TransposeMatMul", ((2, 8), (8, 4)), domain="com.microsoft"),
    ]


CASES = _cases()


def build_model(case: Case) -> onnx.ModelProto:
    """One node of case.op; tuple inputs become graph inputs, arrays become initializers, "" an omitted input."""
    graph_inputs, initializers, names = [], [], []
    for i, spec in enumerate(case.inputs):
        name = f"in{i}"
        if isinstance(spec, str):  # omitted optional input
            names.append("")
            continue
        names.append(name)
        if isinstance(spec, np.ndarray):
            initializers.append(numpy_helper.from_array(spec, name))
        elif isinstance(spec[0], str):
            elem = {"bool": TensorProto.BOOL, "int64": TensorProto.INT64}[spec[0]]
            graph_inputs.append(helper.make_tensor_value_info(name, elem, list(spec[1])))
        else:
            graph_inputs.append(helper.make_tensor_value_info(name, F, list(spec)))
    node = helper.make_node(case.op, names, list(case.outputs), domain=case.domain, **case.attrs)
    outputs = [helper.make_tensor_value_info(o, case.output_type, case.output_shape) for o in case.outputs]
    graph = helper.make_graph([node], f"single_{case.op}", graph_inputs, outputs, initializers)
    imports = [helper.make_opsetid("", case.opset)]
    if case.domain:
        imports.append(helper.make_opsetid(case.domain, 1))
    return helper.make_model(graph, opset_imports=imports, ir_version=10)


def openvino_converts(path: Path) -> tuple[bool, str]:
    import openvino as ov

    try:
        ov.convert_model(str(path))
    except Exception as exc:  # OpConversionFailure and friends: the message says why
        return False, str(exc)
    return True, ""


def test_openvino_cases_cover_both_outcomes():
    """The case list must exercise listed and unlisted ops, or the check below proves nothing."""
    profile = catalog().op_set("openvino-cpu")
    listed = [c.label for c in CASES if c.op_id in profile]
    unlisted = [c.label for c in CASES if c.op_id not in profile]
    assert len(listed) >= 25, listed
    assert unlisted, "no case for an op the openvino-cpu profile omits"
    for required in (
        "Conv",
        "MatMul",
        "Gemm",
        "LayerNormalization",
        "Softmax",
        "Erf",
        "Gelu",
        "Transpose",
        "Reshape",
        "ReduceMean",
        "BatchNormalization",
        "Sigmoid",
        "Add",
        "Mul",
        "Div",
        "Sqrt",
        "Pow",
        "Concat",
        "Slice",
        "Gather",
        "Resize",
        "GlobalAveragePool",
    ):
        assert required in listed, f"{required} must be checked and listed"


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_openvino_profile_is_honest(case: Case, tmp_path: Path):
    model = build_model(case)
    if not case.domain:  # make sure a verdict is about the op, not about a malformed test model
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        onnx.checker.check_model(model)
    path = tmp_path / f"{case.op}.onnx"
    onnx.save(model, path)

    listed = case.op_id in catalog().op_set("openvino-cpu")
    accepted, message = openvino_converts(path)
    if listed:
        assert accepted, f"openvino-cpu lists {case.label} but openvino.convert_model rejects it:\n{message[:800]}"
    else:
        assert not accepted, f"openvino-cpu omits {case.label} but openvino.convert_model converts it"
        assert "No conversion rule found" in message, (
            f"{case.label} was rejected for another reason than a missing conversion rule:\n{message[:800]}"
        )


# --------------------------------------------------------------------------------------------------------------
# NPU profiles and all profiles
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NPU_PROFILES)
def test_npu_profile_lacks_a_transformer_op(name: str):
    assert name in catalog().data.op_profiles, f"NPU profile {name!r} missing from targets.yaml"
    ops = catalog().op_set(name)
    lacking = [op for op in TRANSFORMER_OPS if OpId("", op) not in ops]
    assert lacking, f"{name} lists all of {TRANSFORMER_OPS}; an NPU profile must lack at least one"
    # NPU compilers take plain ONNX (or TFLite): no ONNX Runtime contrib ops.
    assert all(op.domain == "" for op in ops), sorted(str(op) for op in ops if op.domain)
    # ...but they all run convolutions: a profile without Conv is an empty or broken list.
    assert OpId("", "Conv") in ops


@functools.lru_cache(maxsize=1)
def known_schemas() -> frozenset:
    from onnxruntime.capi.onnxruntime_pybind11_state import get_all_operator_schema

    known = {OpId("" if s.domain == "ai.onnx" else s.domain, s.name) for s in get_all_operator_schema()}
    known |= {OpId("", s.name) for s in onnx.defs.get_all_schemas_with_history() if s.domain in ("", "ai.onnx")}
    return frozenset(known)


@pytest.mark.parametrize("name", sorted(load_catalog().data.op_profiles))
def test_profile_resolves_to_real_ops(name: str):
    profile = catalog().data.op_profiles[name]
    assert profile.source.strip(), f"{name} has no source"
    ops = catalog().op_set(name)
    assert ops, f"{name} resolves to an empty op set"
    unknown = sorted(str(op) for op in ops - known_schemas() - NO_SCHEMA_ALLOWED - CAPABILITIES)
    assert unknown == [], f"{name} lists ops no ONNX or ONNX Runtime schema defines (typo?): {unknown}"
    raw = [*profile.ops, *profile.add, *profile.remove]
    assert len(raw) == len(set(raw)), f"{name} lists an op twice"
