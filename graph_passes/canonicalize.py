"""Canonicalise an exported graph: constant folding, shape inference, dead-code removal (onnxsim).

onnx.ModelProto -> onnxsim.simplify -> onnx.ModelProto (unchanged, with a note, when onnxsim cannot handle it)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CanonicalizeResult:
    model: object  # onnx.ModelProto
    simplified: bool
    note: str = ""


def canonicalize(model) -> CanonicalizeResult:
    import onnx
    import onnxsim

    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as exc:  # onnxsim raises from C++ with assorted types
        return CanonicalizeResult(onnx.shape_inference.infer_shapes(model), False, f"onnxsim skipped: {exc}"[:300])
    if not ok:
        return CanonicalizeResult(model, False, "onnxsim's own check failed; kept the exported graph")
    return CanonicalizeResult(simplified, True)
