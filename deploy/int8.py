"""INT8 for any backend: one entry point, the backend names only its form.

quantize_int8(FP32 onnx, calibration, form, placement, gate, progress)
  -> calibration size by range convergence (activation_stats)          -> calib.head(n)
  -> SmoothQuant (ORT/TensorRT forms: graph-level, smoothquant.py; OpenVINO: NNCF's smooth_quant_alphas)
  -> quantize in the form (quantize.py), Q/DQ forms bias-corrected (bias_correction.py) -> judge on held-out samples
  -> OpenVINO: NNCF misses the gate -> the Q/DQ graph (run by OpenVINO) is tried; the better worst sample is kept
  -> gate missed and sensitive == "auto": int8_fallback.fewest_float_layers (measured sensitivity, binary search)
  -> (quantized model, info for the manifest's precision_info)
Forms: ort_qdq (uint8 activations, int32 bias: ORT CPU), symmetric_qdq (int8 symmetric Q/DQ: TensorRT
--stronglyTyped, NPU compilers), nncf_openvino (ov.Model via NNCF). Float layers come back as plain ONNX node names
(info["float_layers"]) for the NPU toolchain helpers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vdeploy.backends.base import Int8Form
from vdeploy.calibration import CalibrationData
from vdeploy.int8_eval import _ort_run, _ov_child, _ov_run, default_evaluator, reference_outputs  # noqa: F401
from vdeploy.quantize import Placement, name_nodes

EVAL_SAMPLES = 16  # calibration samples the in-build gate is judged on
MIN_HELD_OUT = 8  # held-out samples (given but not needed for converged ranges) enough to judge on
AUTO = "auto"
NNCF_ALPHA = 0.8  # NNCF's default is 0.95; MiniLM held-out worst-sample cosine 0.990 at 0.95, 0.994 at 0.8


def parse_sensitive(value: int | str) -> int | str:
    """--int8-sensitive: "auto", or N >= 0 layers (the option's older integer form)."""
    if isinstance(value, int) or str(value).strip().isdigit():
        return int(value)
    if str(value).strip().lower() == AUTO:
        return AUTO
    raise ValueError(f"{value!r} is neither 'auto' nor a number of layers (0, 1, 2, ...)")


def form_for_backend(backend: str) -> Int8Form:
    """The INT8 form a backend declares (BackendBase.int8_form)."""
    from vdeploy.backends import backend_class

    return backend_class(backend).int8_form


@dataclass(frozen=True)
class Gate:
    """The numerics gate the build is judged by: pooled and worst-sample cosine, pooled rel_err, and (where the
    target or --min-top1-agreement asks for it, and the output is class scores) top-1 agreement with FP32."""

    min_cosine: float
    max_rel_err: float
    min_top1_agreement: float | None = None

    def check(self, reference: np.ndarray, outputs: np.ndarray) -> GateResult:
        from vdeploy.validate.compare import _top1

        ref, out = np.asarray(reference, np.float64), np.asarray(outputs, np.float64)
        if not np.all(np.isfinite(out)):
            return GateResult(0.0, 0.0, float("inf"), self, 0.0)
        a, b = ref.reshape(len(ref), -1), out.reshape(len(out), -1)
        per = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)
        pooled = float(a.ravel() @ b.ravel() / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
        rel = float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))
        top1 = _top1(ref, out) if self.min_top1_agreement is not None else None
        return GateResult(pooled, float(per.min()), rel, self, top1)


@dataclass(frozen=True)
class GateResult:
    cosine: float
    worst_cosine: float
    rel_err: float
    gate: Gate
    top1: float | None = None  # top-1 agreement, where the gate asks for it and the output is class scores

    @property
    def holds(self) -> bool:
        top1_ok = self.gate.min_top1_agreement is None or self.top1 is None or self.top1 >= self.gate.min_top1_agreement
        cosine_ok = min(self.cosine, self.worst_cosine) >= self.gate.min_cosine
        return cosine_ok and self.rel_err <= self.gate.max_rel_err and top1_ok

    @property
    def shortfall(self) -> float:
        """How far the worst-sample cosine is below the gate (0 when it holds on cosine)."""
        return max(0.0, self.gate.min_cosine - min(self.cosine, self.worst_cosine))

    def to_dict(self) -> dict:
        out = {
            "cosine": round(self.cosine, 6),
            "worst_sample_cosine": round(self.worst_cosine, 6),
            "rel_err": round(self.rel_err, 5),
            "holds": self.holds,
        }
        if self.top1 is not None:
            out["top1_agreement"] = round(self.top1, 4)
        return out


@dataclass(frozen=True)
class Int8Options:
    sensitive: int | str = AUTO  # "auto": fewest float layers until the gate holds; N: the N most sensitive
    smooth_alpha: float | None = None  # None: per form (0.5 graph-level, NNCF's 0.95); < 0 disables SmoothQuant
    converge: bool = True  # pick the calibration size by range convergence
    time_budget_s: float = 240.0  # the fallback search stops measuring layers after this
    learned_ranges: dict | None = None  # tensor -> (rmin, rmax) from QAT: used as-is, not re-calibrated
    run_env: dict | None = None  # environment OpenVINO INT8 must run under here (an ISA cap): judged in a child
    bias_correction: bool = True  # Q/DQ forms: correct each Conv/Gemm bias for its weight rounding (bias_correction.py)
    split_attention: bool = True  # Q/DQ forms: split ORT's fused Attention so its QKV projection is INT8 too


def quantize_int8(
    model,
    calib: CalibrationData,
    form: Int8Form,
    placement: Placement,
    gate: Gate,
    progress: Callable[[str], None] = lambda _: None,
    options: Int8Options = Int8Options(),
    evaluate: Callable | None = None,
):
    """(quantized model, info). `evaluate(quantized) -> outputs [n, ...]` runs the form's artifact on the judging
    samples (default: ONNX Runtime for Q/DQ forms, OpenVINO CPU for NNCF and for Q/DQ graphs built for OpenVINO)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="vdeploy-int8-") as workdir:
        return _quantize_int8(model, calib, form, placement, gate, progress, options, evaluate, Path(workdir))


def _quantize_int8(model, calib, form: Int8Form, placement, gate: Gate, progress, options, evaluate, workdir: Path):
    from vdeploy import int8_fallback

    started = time.perf_counter()
    model = name_nodes(model)
    if form is not Int8Form.nncf_openvino and options.split_attention:  # else ORT's fused Attention keeps QKV float
        from vdeploy.attention_split import split_fused_attention

        model = split_fused_attention(model)
    info: dict = {"form": form.value}
    given = calib
    calib, stats = _converged(model, calib, options, info, progress)
    eval_data, judged_on = _judging_samples(given, len(calib))
    info["gate"] = {"min_cosine": gate.min_cosine, "max_rel_err": gate.max_rel_err, "judged_on": judged_on}
    if gate.min_top1_agreement is not None:
        info["gate"]["min_top1_agreement"] = gate.min_top1_agreement
    evaluate = evaluate or default_evaluator(form, eval_data, options.run_env)
    reference = reference_outputs(model, eval_data)
    candidate = _Candidate.make(model, calib, form, placement, options, info, progress, stats, workdir / "a.json")
    quantized = candidate.build(candidate.placement)
    result = gate.check(reference, evaluate(quantized))
    info["int8_all"] = result.to_dict()
    if form is Int8Form.nncf_openvino and not result.holds and options.sensitive == AUTO:
        qdq = _Candidate.make(
            model, calib, Int8Form.ort_qdq, placement, options, {}, progress, stats, workdir / "b.json"
        )
        progress(
            f"NNCF's INT8 misses the gate (worst-sample cosine {result.worst_cosine:.4f}): trying Q/DQ on OpenVINO"
        )
        qdq_model = qdq.build(qdq.placement)
        qdq_result = gate.check(reference, evaluate(qdq_model))
        info["nncf_or_qdq"] = {"nncf": result.to_dict(), "qdq_on_openvino": qdq_result.to_dict()}
        if (qdq_result.holds, qdq_result.worst_cosine) > (result.holds, result.worst_cosine):
            candidate, quantized, result = qdq, qdq_model, qdq_result
            info["form"] = f"{Int8Form.ort_qdq.value} (run by OpenVINO)"
            info.update(qdq.info)
            info["int8_all"] = result.to_dict()
    placement = candidate.placement
    sensitive = options.sensitive
    if isinstance(sensitive, int) and sensitive > 0:
        progress(f"measuring per-layer INT8 sensitivity (keeping the {sensitive} worst float)")
        ranking = int8_fallback.rank_layers(
            candidate.prepared,
            calib,
            placement,
            eval_data,
            reference,
            options.time_budget_s,
            progress,
            candidate.ort_base(quantized),
        )
        chosen = tuple(ranking.names[:sensitive])
        quantized = candidate.build(placement.keep_float(chosen))
        result = gate.check(reference, evaluate(quantized))
        info["fallback"] = {"mode": f"fixed {sensitive}", "ranking": ranking.to_dict(), "float_layers": list(chosen)}
        placement = placement.keep_float(chosen)
    elif sensitive == AUTO and not result.holds:
        top1 = "" if result.top1 is None else f", top-1 agreement {result.top1:.3f}"
        progress(
            f"INT8 misses the gate (worst-sample cosine {result.worst_cosine:.4f}{top1}): "
            "searching the fewest layers to keep float"
        )
        search = int8_fallback.fewest_float_layers(
            candidate.prepared,
            calib,
            placement,
            gate,
            eval_data,
            reference,
            candidate.build,
            evaluate,
            options.time_budget_s,
            progress,
            base=candidate.ort_base(quantized),
            int8_all=quantized,
            runtime="openvino" if form is Int8Form.nncf_openvino else "onnxruntime",
            run_env=options.run_env,
        )
        info["fallback"] = search.to_dict()
        quantized, result, placement = (
            search.model or quantized,
            search.result or result,
            placement.keep_float(search.float_layers),
        )
    info["result"] = result.to_dict()
    info["float_layers"] = sorted(n for n in placement.keep_float_nodes if not n.startswith("vdeploy_smooth/"))
    info["placement"] = placement.to_dict()
    info["quantize_seconds"] = round(time.perf_counter() - started, 1)
    if not result.holds:
        info["gate_missed_by"] = {
            "cosine": round(result.shortfall, 6),
            "rel_err": round(max(0.0, result.rel_err - gate.max_rel_err), 6),
        }
        if result.top1 is not None and gate.min_top1_agreement is not None:
            info["gate_missed_by"]["top1_agreement"] = round(max(0.0, gate.min_top1_agreement - result.top1), 4)
    return quantized, info


@dataclass(frozen=True)
class _Candidate:
    """One way to build the INT8 model: the prepared (smoothed) FP32 graph, its placement and form, and the bias
    means Q/DQ builds are corrected with."""

    prepared: object
    placement: Placement
    form: Int8Form
    options: Int8Options
    calib: CalibrationData
    means: dict | None
    info: dict
    cache: Path  # ONNX Runtime's calibrated ranges, shared by every build of this candidate

    @classmethod
    def make(cls, model, calib, form: Int8Form, placement, options: Int8Options, info: dict, progress, stats, cache):
        prepared, placement = _smooth(model, calib, form, placement, options, info, progress, stats)
        means = None
        if form is not Int8Form.nncf_openvino and options.bias_correction and not options.learned_ranges:
            from vdeploy.bias_correction import input_means

            means = input_means(prepared, calib, stats)
        return cls(prepared, placement, form, options, calib, means, info, cache)

    def build(self, placement: Placement):
        quantized = quantize_in_form(self.prepared, self.calib, self.form, placement, self.options, self.cache)
        if self.means is None:
            return quantized
        from vdeploy.bias_correction import correct_biases

        corrected = correct_biases(quantized, self.prepared, self.means)
        self.info.setdefault("bias_correction", corrected.to_dict())
        return corrected.model

    def ort_base(self, quantized):
        """The ONNX Runtime Q/DQ build the fallback probes: `quantized` itself where the form is Q/DQ."""
        if self.form is not Int8Form.nncf_openvino:
            return quantized
        from vdeploy.quantize import quantize_onnx_qdq

        return quantize_onnx_qdq(self.prepared, self.calib, self.placement, calibration_cache=self.cache)


def _judging_samples(given: CalibrationData, used: int) -> tuple[CalibrationData, str]:
    """Samples the gate is judged on: held-out ones (given, not calibrated on) where there are enough, since ranges
    fitted to a sample flatter it (digits CNN: 0.991 worst cosine on calibrated samples, 0.983 on unseen ones)."""
    held = given.rows(used, used + EVAL_SAMPLES)
    if len(held) >= MIN_HELD_OUT:
        return held, f"{len(held)} held-out calibration samples (not calibrated on), worst sample and pooled"
    head = given.head(min(EVAL_SAMPLES, used))
    return head, f"first {len(head)} calibration samples, worst sample and pooled"


def _converged(model, calib: CalibrationData, options: Int8Options, info: dict, progress):
    """(calibration samples to use, their activation stats or None); the stats serve SmoothQuant and bias
    correction too, so the FP32 graph is run over the calibration set once for all three."""
    from vdeploy.activation_stats import activation_stats

    if not options.converge or len(calib) <= 16:
        info["calibration_size"] = {
            "samples_used": len(calib),
            "samples_given": len(calib),
            "converged": None,
            "why": "all samples (convergence off or <= 16 given)",
        }
        return calib, None
    progress(f"measuring activation-range convergence on up to {len(calib)} calibration samples")
    stats = activation_stats(model, calib, [])
    info["calibration_size"] = stats.to_dict()
    return calib.head(stats.samples_used), stats.stats


def _smooth(model, calib, form: Int8Form, placement: Placement, options: Int8Options, info: dict, progress, stats):
    """SmoothQuant for the Q/DQ forms (graph-level); NNCF does its own in quantize_in_form."""
    alpha = options.smooth_alpha
    if form is Int8Form.nncf_openvino or (alpha is not None and alpha < 0) or options.learned_ranges:
        return model, placement  # QAT ranges were learned on the unsmoothed activations
    from vdeploy.smoothquant import DEFAULT_ALPHA, smooth_quant

    progress("SmoothQuant: migrating activation outliers into the weights")
    smoothed = smooth_quant(model, calib, DEFAULT_ALPHA if alpha is None else alpha, stats=stats)
    info["smooth_quant"] = smoothed.to_dict()
    return smoothed.model, placement.keep_float(smoothed.mul_nodes)


def quantize_in_form(
    model,
    calib: CalibrationData,
    form: Int8Form,
    placement: Placement,
    options: Int8Options = Int8Options(),
    calibration_cache=None,
):
    from vdeploy.quantize import quantize_onnx_qdq
    from vdeploy.quantize_openvino import quantize_openvino

    if form is Int8Form.nncf_openvino:
        alpha = NNCF_ALPHA if options.smooth_alpha is None else options.smooth_alpha
        return quantize_openvino(model, calib, placement, smooth_alpha=alpha)
    return quantize_onnx_qdq(
        model,
        calib,
        placement,
        symmetric=form is Int8Form.symmetric_qdq,
        calibration_cache=calibration_cache,
        range_overrides=options.learned_ranges,
    )
