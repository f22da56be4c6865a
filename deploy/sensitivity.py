"""Per-layer INT8 sensitivity: which layers cost the most accuracy when quantized, measured, not guessed.

model + calibration -> one Q/DQ build -> each layer swapped back to float alone -> output cosine vs FP32 -> ranked
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vdeploy.calibration import CalibrationData
from vdeploy.quantize import COMPUTE_OPS, Placement, model_batch_size, name_nodes, quantize_onnx_qdq

EVAL_SAMPLES = 64  # inputs sensitivity() compares outputs on when no eval_fn is given


@dataclass(frozen=True)
class LayerSensitivity:
    node: str
    cosine: float  # output cosine vs FP32 with this layer kept float and the rest quantized
    gain: float  # cosine - baseline cosine (everything quantized per the placement): how much the layer costs


@dataclass(frozen=True)
class SensitivityReport:
    baseline_cosine: float
    layers: tuple[LayerSensitivity, ...]  # most sensitive first
    most_sensitive: tuple[str, ...]  # the n names asked for

    def to_dict(self) -> dict:
        return {
            "baseline_cosine": self.baseline_cosine,
            "most_sensitive": list(self.most_sensitive),
            "layers": [{"node": s.node, "cosine": s.cosine, "gain": s.gain} for s in self.layers],
        }


def sensitivity(
    model, calib: CalibrationData, eval_fn: Callable | None = None, n: int = 1, placement: Placement = Placement()
) -> SensitivityReport:
    """Measure, layer by layer (Conv/ConvTranspose/MatMul/Gemm the placement quantizes), how much output cosine
    against FP32 comes back when that one layer stays float; return the n with the largest gain. One Q/DQ build is
    made; each layer is then swapped back to its FP32 weights and input in a copy of it (int8_fallback.float_variant:
    graph surgery, no re-quantization). eval_fn(model_proto) -> outputs array defaults to ONNX Runtime CPU on the
    first EVAL_SAMPLES calibration samples."""
    from vdeploy.int8_fallback import float_variant

    model = name_nodes(model)
    eval_fn = eval_fn or _ort_eval(calib.head(EVAL_SAMPLES))
    reference = np.asarray(eval_fn(model), dtype=np.float64)
    excluded = set(placement.float_nodes(model))
    candidates = [node.name for node in model.graph.node if node.op_type in COMPUTE_OPS and node.name not in excluded]
    quantized = quantize_onnx_qdq(model, calib, placement)
    baseline = _cosine(reference, eval_fn(quantized))
    scores = []
    for name in candidates:
        cos = _cosine(reference, eval_fn(float_variant(quantized, model, [name])))
        scores.append(LayerSensitivity(name, cos, cos - baseline))
    ranked = tuple(sorted(scores, key=lambda s: s.gain, reverse=True))
    return SensitivityReport(baseline, ranked, tuple(s.node for s in ranked[:n]))


def _ort_eval(calib: CalibrationData) -> Callable:
    def run(model) -> np.ndarray:
        import onnxruntime as ort

        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        batch = model_batch_size(model, dynamic_default=len(calib))
        return np.concatenate([session.run(None, feed)[0] for feed in calib.batches(batch)])

    return run


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
