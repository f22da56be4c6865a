"""Small graphs written in ONNX text, run through legalization and onnxruntime (all optimisations off).

text + initializers -> ModelProto -> legalize(op set, specs) -> (ModelProto, LegalizeResult) -> ORT outputs.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import onnxruntime as ort

from vdeploy.graph_passes.legalize import legalize
from vdeploy.targets import OpId, load_catalog

# FP32 gates, max |out - ref| / max |ref|. The project's gate is 1e-4; exact rewrites are held 10x tighter.
EXACT_REL = 1e-5
FP32_GATE_REL = 1e-4

ORT_OPS = load_catalog().op_set("onnxruntime-cpu")  # every op the rewrites can emit, and the big ones


def without(*names: str) -> frozenset:
    """The ORT op set minus some ops: a target that lacks them."""
    return ORT_OPS - {OpId.parse(n) for n in names}


def build(body: str, opset: int = 18, **initializers: np.ndarray) -> onnx.ModelProto:
    """A checked model from an ONNX-text graph; initializers are attached by name."""
    model = onnx.parser.parse_model(f'<ir_version: 10, opset_import: ["" : {opset}]>\n{body}')
    for name, array in initializers.items():
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(array), name))
    onnx.checker.check_model(model, full_check=True)
    return model


def legalized(model: onnx.ModelProto, op_set: frozenset, *specs, fallback: bool = True):
    """(legalized ModelProto, LegalizeResult) for the given specs (all of ALL_SPECS when none given)."""
    ir_model = ir.from_proto(model)
    result = legalize(ir_model, op_set, fallback=fallback, specs=specs or None)
    proto = ir.to_proto(ir_model)
    onnx.checker.check_model(proto, full_check=True)
    return proto, result


def op_types(model: onnx.ModelProto, constants: bool = False) -> list[str]:
    """Op types in graph order (Constant nodes left out unless asked for)."""
    return [n.op_type for n in model.graph.node if constants or n.op_type != "Constant"]


def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(op_types(model))


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def random_feeds(model: onnx.ModelProto, seed: int = 0, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    initializers = {t.name for t in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else 1 for d in tensor.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        feeds[value.name] = (scale * rng.standard_normal(shape)).astype(dtype)
    return feeds


def rel_err(reference: list[np.ndarray], outputs: list[np.ndarray]) -> float:
    """max over outputs of max |out - ref| / max |ref| (the output scale)."""
    return max(
        float(np.abs(o.astype(np.float64) - r).max() / max(np.abs(r).max(), 1e-12)) for r, o in zip(reference, outputs)
    )


def assert_same_numerics(
    before: onnx.ModelProto, after: onnx.ModelProto, rel: float = EXACT_REL, seed: int = 0, scale: float = 1.0
) -> float:
    feeds = random_feeds(before, seed, scale)
    err = rel_err(run(before, feeds), run(after, feeds))
    assert err <= rel, f"max abs error {err:.3g} x output scale exceeds {rel:g}"
    return err
