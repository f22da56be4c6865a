"""Accuracy-aware INT8 fallback: the fewest layers kept float until the numerics gate holds, measured and bounded.

(smoothed FP32 onnx, calibration, placement, gate)
  -> one ONNX Runtime Q/DQ build (bias-corrected) -> float_variant: the same graph with some layers swapped back to
     their FP32 weights and FP32 inputs (graph surgery, no re-quantization: ~0.3 s a probe, not a quantizer run)
  -> rank_layers: each Conv/MatMul/Gemm float alone, worst-sample cosine vs FP32 -> gain; stops measuring at the time
     budget (the rest ranked after, unmeasured)
  -> fewest_float_layers: k (the k most sensitive float) doubled then bisected over the variants, then the chosen k
     built in the target's own form and judged by the gate; a miss there steps k up (builds, bounded by the budget)
  -> latency of the result vs all-INT8 and vs FP32, measured side by side; per layer: the measured total split by MACs
(Anchors: NNCF quantize_with_accuracy_control ranks and reverts layers the same way; so does AI Hub's Lite-MP.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
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
            "measured_on": "one ONNX Runtime Q/DQ build, each layer swapped back to float alone",
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
    base=None,
) -> Ranking:
    """Each quantized layer kept float alone in `base` (an ONNX Runtime Q/DQ build of `model`; built here when not
    given), ranked by how much worst-sample cosine it gives back."""
    from vdeploy.int8 import Gate
    from vdeploy.int8_eval import _ort_run

    started = time.perf_counter()
    excluded = set(placement.float_nodes(model))
    candidates = [n.name for n in model.graph.node if n.op_type in COMPUTE_OPS and n.name not in excluded]
    base = base if base is not None else quantize_onnx_qdq(model, calib, placement)
    gate = Gate(1.0, 1.0)
    baseline = gate.check(reference, _ort_run(base, eval_data)).worst_cosine
    scores = []
    for i, name in enumerate(candidates):
        if time.perf_counter() - started > budget_s:
            break
        if i % 10 == 0:
            progress(f"sensitivity: layer {i + 1}/{len(candidates)}")
        cos = gate.check(reference, _ort_run(float_variant(base, model, [name]), eval_data)).worst_cosine
        scores.append({"node": name, "worst_cosine": round(cos, 6), "gain": round(cos - baseline, 6)})
    scores.sort(key=lambda s: s["gain"], reverse=True)
    measured = {s["node"] for s in scores}
    names = tuple(s["node"] for s in scores) + tuple(n for n in candidates if n not in measured)
    return Ranking(names, tuple(scores), len(candidates) - len(scores), time.perf_counter() - started)


def float_variant(quantized, fp32, names):
    """`quantized` (Q/DQ onnx.ModelProto) with the named layers computing in float: their weights and biases are
    the FP32 initializers again and they read their FP32 input where a Q -> DQ pair stands in front of it (as a
    build that keeps them float does; a pair that stands for a removed ReLU/Clip stays). Others are unchanged."""
    import onnx

    model = onnx.ModelProto.FromString(quantized.SerializeToString())
    graph, wanted = model.graph, set(names)
    fp32_inits = {t.name: t for t in fp32.graph.initializer}
    have = {t.name for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    fp32_producer = {o: n.name for n in fp32.graph.node for o in n.output}
    for node in graph.node:
        if node.name not in wanted:
            continue
        for slot, name in enumerate(node.input):
            source = _float_twin(name, slot, producer, fp32_inits, fp32_producer)
            if source is None and slot > 0 and name in have and name in fp32_inits:
                source = name  # a float bias the Q/DQ build corrected in place: the FP32 one again
            if source is None:
                continue
            if source in fp32_inits:  # under its own name unless a node output (the DQ's) or the build has it
                renamed = f"{source}/float" if source in producer or source in have else source
                if renamed not in have:
                    tensor = onnx.TensorProto()
                    tensor.CopyFrom(fp32_inits[source])
                    tensor.name = renamed
                    graph.initializer.append(tensor)
                    have.add(renamed)
                source = renamed
            node.input[slot] = source
    return model


def _float_twin(name: str, slot: int, producer, fp32_inits, fp32_producer) -> str | None:
    """The FP32 tensor behind a dequantized layer input: the FP32 initializer of a DQ'd weight/bias, or the input of
    a Q -> DQ pair whose tensor the FP32 graph's same node produces. None: keep the input as it is."""
    dq = producer.get(name)
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    if slot > 0:
        for candidate in (dq.input[0].removesuffix("_quantized"), dq.output[0]):
            if candidate in fp32_inits:
                return candidate
        return None
    q = producer.get(dq.input[0])
    if q is None or q.op_type != "QuantizeLinear":
        return None
    source = q.input[0]
    here = producer.get(source)
    same = (here.name if here is not None else None) == fp32_producer.get(source)
    return source if same else None


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
    base=None,
    int8_all=None,
    runtime: str | None = None,
    run_env: dict | None = None,
) -> FallbackSearch:
    """The smallest k such that the k most sensitive layers float make the gate hold: k doubled (1, 2, 4, ...) then
    bisected over float variants of one ONNX Runtime Q/DQ build (`base`), then built in the target's form (`build`,
    judged with `evaluate`); where that build misses, k steps up by half again (real builds) until it holds or the
    budget ends.
    `int8_all`: the target-form all-INT8 build, reused for the latency figures; `runtime` ("onnxruntime" |
    "openvino", default: by the build's type) runs them, in a child process under `run_env` where one is given."""
    from vdeploy.int8_eval import _ort_run

    started = time.perf_counter()
    base = base if base is not None else quantize_onnx_qdq(model, calib, placement)
    ranking = rank_layers(model, calib, placement, eval_data, reference, budget_s * 0.5, progress, base)
    probes, variants, built = [], {}, {}

    def variant(k: int) -> bool:
        if k not in variants:
            result = gate.check(reference, _ort_run(float_variant(base, model, ranking.names[:k]), eval_data))
            variants[k] = result.holds
            probes.append(
                {"k": k, "worst_cosine": round(result.worst_cosine, 6), "holds": result.holds, "on": "variant"}
            )
        return variants[k]

    def real(k: int):
        if k not in built:
            quantized = build(placement.keep_float(ranking.names[:k]))
            built[k] = (quantized, gate.check(reference, evaluate(quantized)))
            holds = built[k][1].holds
            probes.append({"k": k, "worst_cosine": round(built[k][1].worst_cosine, 6), "holds": holds, "on": "build"})
            progress(f"fallback: {k} layer(s) float -> worst-sample cosine {built[k][1].worst_cosine:.4f}")
        return built[k]

    n = len(ranking.names)
    lo, hi = 0, 1  # variants: the gate misses at lo (all INT8); k doubles until it holds (or every layer is float)
    while hi < n and not variant(hi):
        lo, hi = hi, min(n, hi * 2)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if variant(mid) else (mid, hi)
    k = hi
    while n and not real(k)[1].holds and k < n and time.perf_counter() - started < budget_s:
        k = min(n, k + max(1, k // 2))
    if n == 0 or not real(k)[1].holds:
        model_n, result_n = real(n) if n else (None, None)
        search = FallbackSearch((), result_n, None, False, tuple(probes), ranking)
        return _with_costs(
            search, model, build, placement, eval_data, (runtime, run_env), all_float=model_n, int8_all=int8_all
        )
    chosen, result = built[k]
    search = FallbackSearch(tuple(ranking.names[:k]), result, chosen, True, tuple(probes), ranking)
    return _with_costs(search, model, build, placement, eval_data, (runtime, run_env), chosen=chosen, int8_all=int8_all)


def _with_costs(
    search: FallbackSearch,
    fp32_model,
    build,
    placement,
    eval_data,
    where: tuple[str | None, dict | None],
    chosen=None,
    all_float=None,
    int8_all=None,
):
    """Latency, measured side by side: all-INT8, the chosen build (or every candidate float), FP32."""
    try:
        int8_all = int8_all if int8_all is not None else build(placement)
        runtime, env = where
        runtime = runtime or ("onnxruntime" if hasattr(int8_all, "SerializeToString") else "openvino")
        models = {"int8_all": int8_all, "fp32": fp32_model}
        if chosen is not None:
            models["chosen"] = chosen
        if all_float is not None:
            models["all_candidates_float"] = all_float
        ms = _latencies_child(models, eval_data, runtime, env) if env else _latencies(models, eval_data, runtime)
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
    costs: dict[str, object] = {
        "source": f"measured here on {runtime}, p50 of {LATENCY_ITERS} interleaved runs",
        "ms": ms,
    }
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


def _latencies(models: dict, eval_data: CalibrationData, runtime: str) -> dict[str, float]:
    """p50 ms of each model (onnx.ModelProto or ov.Model) on ONNX Runtime or OpenVINO CPU, runs interleaved."""
    runners = {name: _runner(m, runtime) for name, m in models.items()}
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


def _latencies_child(models: dict, eval_data: CalibrationData, runtime: str, env: dict) -> dict[str, float]:
    """_latencies in a child process under `env` (an ISA cap OpenVINO INT8 needs on this CPU: set before it loads)."""
    import json
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    import onnx

    with tempfile.TemporaryDirectory(prefix="vdeploy-int8-latency-") as tmp:
        files = {}
        for name, model in models.items():
            if hasattr(model, "SerializeToString"):
                files[name] = str(Path(tmp) / f"{name}.onnx")
                onnx.save(model, files[name])
            else:
                import openvino as ov

                files[name] = str(Path(tmp) / f"{name}.xml")
                ov.save_model(model, files[name], compress_to_fp16=False)
        np.savez(Path(tmp) / "in.npz", **next(eval_data.batches(1)))
        code = (
            "import sys, json, numpy as np, onnx, openvino as ov; from vdeploy.calibration import CalibrationData; "
            "from vdeploy.int8_fallback import _latencies; files = json.loads(sys.argv[1]); a = np.load(sys.argv[2]); "
            "load = lambda f: onnx.load(f) if f.endswith('.onnx') else ov.Core().read_model(f); "
            "print(json.dumps(_latencies({k: load(f) for k, f in files.items()}, "
            "CalibrationData({k: a[k] for k in a.files}, 'latency'), sys.argv[3])))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, json.dumps(files), str(Path(tmp) / "in.npz"), runtime],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            raise RuntimeError(f"latency child exited {done.returncode}: {done.stderr.strip()[-200:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])


def _runner(model, runtime: str) -> Callable:
    if runtime == "onnxruntime":
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
