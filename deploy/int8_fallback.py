"""Accuracy-aware INT8 fallback: the fewest layers kept float until the numerics gate holds, measured and bounded.

(smoothed FP32 onnx, calibration, placement, gate)
  -> rank_layers: each Conv/MatMul/Gemm kept float alone, Q/DQ on ONNX Runtime (ranges calibrated once, cached),
     worst-sample cosine vs FP32 -> gain; stops measuring at the time budget (the rest ranked after, unmeasured)
  -> fewest_float_layers: binary search on k over the ranking (k most sensitive float), each probe built in the
     target's own form and judged by the gate -> the smallest k that holds (or: every candidate float still misses)
  -> latency of the result vs all-INT8 and vs FP32, measured side by side; per layer: the measured total split by MACs
(Anchors: NNCF quantize_with_accuracy_control ranks and reverts layers the same way; so does AI Hub's Lite-MP.)
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vdeploy.calibration import CalibrationData
from vdeploy.quantize import COMPUTE_OPS, Placement, quantize_onnx_qdq

LATENCY_ITERS = 20


@dataclass(frozen=True)
class Ranking:
    names: tuple[str, ...]  # most sensitive first; unmeasured layers last, in graph order
    measured: tuple[dict, ...]  # {"node", "worst_cosine", "gain"}
    unmeasured: int
    seconds: float

    def to_dict(self) -> dict:
        return {
            "measured_on": "ONNX Runtime Q/DQ (ranges calibrated once)",
            "layers_measured": len(self.measured),
            "layers_unmeasured": self.unmeasured,
            "seconds": round(self.seconds, 1),
            "top": list(self.measured[:10]),
        }


@dataclass(frozen=True)
class FallbackSearch:
    float_layers: tuple[str, ...]
    result: Any  # int8.GateResult of the chosen build (None if nothing was built)
    model: object  # the chosen quantized model (None: keep the all-INT8 one)
    reached: bool
    probes: tuple[dict, ...]  # {"k", "worst_cosine", "holds"} in search order
    ranking: Ranking
    costs: dict = field(default_factory=dict)  # latency figures

    def to_dict(self) -> dict:
        return {
            "mode": "auto",
            "reached": self.reached,
            "float_layers": list(self.float_layers),
            "probes": list(self.probes),
            "ranking": self.ranking.to_dict(),
            "latency": self.costs,
        }


def rank_layers(
    model,
    calib: CalibrationData,
    placement: Placement,
    eval_data: CalibrationData,
    reference: np.ndarray,
    budget_s: float,
    progress,
) -> Ranking:
    from vdeploy.int8 import Gate, _ort_run

    started = time.perf_counter()
    excluded = set(placement.float_nodes(model))
    candidates = [n.name for n in model.graph.node if n.op_type in COMPUTE_OPS and n.name not in excluded]
    gate = Gate(1.0, 1.0)
    scores = []
    with tempfile.TemporaryDirectory(prefix="vdeploy-rank-") as tmp:
        cache = Path(tmp) / "ranges.json"

        def run(p):
            quantized = quantize_onnx_qdq(model, calib, p, calibration_cache=cache)
            return gate.check(reference, _ort_run(quantized, eval_data)).worst_cosine

        baseline = run(placement)
        for i, name in enumerate(candidates):
            if time.perf_counter() - started > budget_s:
                break
            if i % 10 == 0:
                progress(f"sensitivity: layer {i + 1}/{len(candidates)}")
            cos = run(placement.keep_float([name]))
            scores.append({"node": name, "worst_cosine": round(cos, 6), "gain": round(cos - baseline, 6)})
    scores.sort(key=lambda s: s["gain"], reverse=True)
    measured = {s["node"] for s in scores}
    names = tuple(s["node"] for s in scores) + tuple(n for n in candidates if n not in measured)
    return Ranking(names, tuple(scores), len(candidates) - len(scores), time.perf_counter() - started)


def fewest_float_layers(
    model,
    calib,
    placement: Placement,
    gate,
    eval_data,
    reference,
    build: Callable,
    evaluate: Callable,
    budget_s: float,
    progress,
) -> FallbackSearch:
    """Binary search for the smallest k such that the k most sensitive layers float make the gate hold."""
    ranking = rank_layers(model, calib, placement, eval_data, reference, budget_s * 0.75, progress)
    probes, built = [], {}

    def probe(k: int):
        if k not in built:
            quantized = build(placement.keep_float(ranking.names[:k]))
            built[k] = (quantized, gate.check(reference, evaluate(quantized)))
            probes.append({"k": k, "worst_cosine": round(built[k][1].worst_cosine, 6), "holds": built[k][1].holds})
            progress(f"fallback: {k} layer(s) float -> worst-sample cosine {built[k][1].worst_cosine:.4f}")
        return built[k]

    n = len(ranking.names)
    if n == 0 or not probe(n)[1].holds:
        model_n, result_n = probe(n) if n else (None, None)
        search = FallbackSearch((), result_n, None, False, tuple(probes), ranking)
        return _with_costs(search, model, build, placement, eval_data, all_float=model_n)
    lo, hi = 0, n  # gate fails at lo (all INT8), holds at hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if probe(mid)[1].holds else (mid, hi)
    chosen, result = built[hi]
    search = FallbackSearch(tuple(ranking.names[:hi]), result, chosen, True, tuple(probes), ranking)
    return _with_costs(search, model, build, placement, eval_data, chosen=chosen)


def _with_costs(search: FallbackSearch, fp32_model, build, placement, eval_data, chosen=None, all_float=None):
    """Latency, measured side by side: all-INT8, the chosen build (or every candidate float), FP32."""
    try:
        int8_all = build(placement)
        on_openvino = not hasattr(int8_all, "SerializeToString")
        models = {"int8_all": int8_all, "fp32": _onnx_to_ov(fp32_model) if on_openvino else fp32_model}
        if chosen is not None:
            models["chosen"] = chosen
        if all_float is not None:
            models["all_candidates_float"] = all_float
        ms = _latencies(models, eval_data)
    except Exception as exc:  # latency is a report figure; a failure to time must not fail the build
        return FallbackSearch(
            search.float_layers,
            search.result,
            search.model,
            search.reached,
            search.probes,
            search.ranking,
            {"error": f"{type(exc).__name__}: {exc}"[:200]},
        )
    costs: dict[str, object] = {"source": f"measured here, p50 of {LATENCY_ITERS} interleaved runs", "ms": ms}
    if chosen is not None and search.float_layers:
        extra = ms["chosen"] - ms["int8_all"]
        costs["float_layers_cost_ms"] = round(extra, 4)
        costs["per_layer_ms"] = _split_by_macs(fp32_model, search.float_layers, extra)
        costs["per_layer_source"] = "the measured total split in proportion to each layer's MACs (estimate)"
    if not search.reached:
        costs["cheapest_float_fallback"] = {
            "what": "FP32 build",
            "extra_ms_vs_int8": round(ms["fp32"] - ms["int8_all"], 4),
        }
    return FallbackSearch(
        search.float_layers, search.result, search.model, search.reached, search.probes, search.ranking, costs
    )


def _latencies(models: dict, eval_data: CalibrationData) -> dict[str, float]:
    """p50 ms of each model (onnx.ModelProto on ONNX Runtime, ov.Model on OpenVINO CPU), runs interleaved."""
    runners = {name: _runner(m) for name, m in models.items()}
    feed = next(eval_data.batches(1))
    times: dict[str, list[float]] = {name: [] for name in runners}
    for run in runners.values():
        for _ in range(3):
            run(feed)
    for _ in range(LATENCY_ITERS):
        for name, run in runners.items():
            start = time.perf_counter()
            run(feed)
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: round(float(np.median(t)), 4) for name, t in times.items()}


def _runner(model) -> Callable:
    if hasattr(model, "SerializeToString"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return lambda feed: session.run(None, feed)
    import openvino as ov

    if not isinstance(model, ov.Model):
        model = _onnx_to_ov(model)
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return lambda feed: compiled(list(feed.values()))


def _onnx_to_ov(model):
    from vdeploy.quantize_openvino import onnx_to_ov as convert

    return convert(model)


def _split_by_macs(model, names, total_ms: float) -> dict[str, float]:
    """Each layer's share of total_ms by its weight size (MACs per token/pixel: the work it moves back to float)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    size = {}
    for node in model.graph.node:
        if node.name in names:
            weight = next((inits[i] for i in node.input[1:2] if i in inits), None)
            size[node.name] = int(np.prod(numpy_helper.to_array(weight).shape)) if weight is not None else 1
    total = sum(size.values()) or 1
    return {name: round(total_ms * size.get(name, 0) / total, 4) for name in names}
