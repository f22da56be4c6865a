"""The manifest (schema vdeploy.manifest/1): every number a release gate reads, with the reason when one is null.

(build inputs, coverage, measurements) -> power from a meter or the analytic estimate -> judge -> manifest dict
"""

from __future__ import annotations

import importlib.metadata
import platform

from vdeploy import __version__
from vdeploy.bundle import SCHEMA
from vdeploy.targets import Budgets, Precision, Tolerance
from vdeploy.validate.measure import Latency

TOOLCHAIN_PACKAGES = ("torch", "onnx", "onnxruntime", "onnxscript", "onnx-ir", "onnxsim")  # + the backend's own


def build_manifest(*, request, target, backend, precision, loaded, exported, canonical, model, coverage, artifact,
                   files, feeds, expected, numerics, run, lowered, accuracy=None,
                   samples_source: str = "seeded standard normal") -> dict:
    from vdeploy.validate.budgets import judge

    size_mb = sum(f["bytes"] for f in files if f["path"] in artifact.files) / 1e6
    timed = run.latency
    latency = timed.to_manifest() if timed else None
    power = power_figure(run)
    missing, estimated = {}, set()
    estimate = _estimate(model, target, precision, run.latency)
    if estimate is not None and timed is None:
        timed = Latency.from_samples([estimate["latency_ms"]])
        latency = {"p50": estimate["latency_ms"], "p90": estimate["latency_ms"], "p99": estimate["latency_ms"],
                   "runs": 0, "source": "estimate"}
        estimated.add("latency_ms")
    if estimate is not None and power is None:
        power = {"mean": estimate["mean"], "source": "estimate", "energy_mj": estimate["energy_mj"]}
        estimated.add("power_w")
    host_reason = backend.host_latency_reason(artifact)  # why this host's timings would not count, if so
    if latency is None or ("latency_ms" in estimated and host_reason):
        missing["latency_ms"] = host_reason or "not measured"
    if power is None:
        missing["power_w"] = run.power_reason or "no power meter and no hardware figures for an estimate"
    if lowered.warning:
        missing["calibration"] = lowered.warning
    if accuracy is None:
        missing["accuracy"] = "no labelled data: pass --eval-data FILE.npz (inputs and labels)"
    judgement = judge(budgets_for(target, request), tolerance_for(target, precision, request),
                      numerics=numerics, latency=timed, size_mb=size_mb,
                      power_w=power["mean"] if power else None, missing=missing, estimated=frozenset(estimated),
                      allow_estimates=target.spec.allow_estimates, energy_mj=power["energy_mj"] if power else None,
                      peak_mem_mb=run.peak_rss_mb, deferred=artifact.deferred,
                      top1_drop_pt=accuracy.drop_pt if accuracy else None)
    return {
        "schema": SCHEMA,
        "target": target.name,
        "backend": backend.name,
        "precision": precision,
        "model": {"path": loaded.source, "sha256": loaded.sha256, "format": loaded.format.value},
        "files": files,
        "inputs": [{"name": k, "shape": list(v.shape[1:]), "dtype": str(v.dtype)} for k, v in feeds.items()],
        "outputs": [{"name": k, "shape": list(v.shape[1:]), "dtype": str(v.dtype)} for k, v in expected.items()],
        "coverage": coverage.to_manifest(),
        "numerics": {**numerics.to_manifest(), "inputs": samples_source},
        "latency_ms": latency,
        "power_w": power,
        "size_mb": round(size_mb, 4),
        "peak_mem_mb": round(run.peak_rss_mb, 1) if run.peak_rss_mb else None,
        "budgets": judgement.budgets,
        "violations": [v.to_manifest() for v in judgement.violations],
        "verdict": judgement.verdict.value,
        "toolchain": {**toolchain(), **backend.toolchain()},
        "reason": {**missing, **({"unverified": list(judgement.unverified)} if judgement.unverified else {})},
        "artifact": artifact.to_dict(),
        "export": {"exporter": exported.exporter, "opset": exported.opset, "notes": list(exported.notes),
                   "simplified": canonical.simplified, "simplify_note": canonical.note},
        "estimate": estimate,
        "precision_info": lowered.info,
        "accuracy": accuracy.to_manifest() if accuracy else None,
    }


def power_figure(run) -> dict | None:
    """The metered power of the timed runs, with energy per inference; None without a meter."""
    if not run.energy or not run.latency:
        return None
    return {**run.energy, "energy_mj": round(run.energy["joules"] / run.latency.runs * 1000.0, 4)}


def _estimate(model, target, precision, measured) -> dict | None:
    """Roofline latency/power from the legal graph and the target's hardware figures (None without figures).
    Where latency was really measured, the estimate is calibrated against it and its error reported."""
    hardware = target.spec.hardware
    if hardware is None or Precision(precision) not in hardware.peak_gops:
        return None
    from vdeploy.validate.estimate import calibrate, count_cost, estimate

    cost = count_cost(model)
    result = estimate(cost, hardware, precision).to_manifest()
    if measured is not None:
        calibration = calibrate(measured.p50, cost, hardware, precision)
        result["calibration"] = {"measured_p50_ms": round(measured.p50, 4), "efficiency": calibration.efficiency,
                                 "error_pct": round(calibration.error_pct, 1)}
    return result


def budgets_for(target, request) -> Budgets:
    overrides = {k: v for k, v in (("latency_ms", request.max_latency_ms), ("power_w", request.max_power_w))
                 if v is not None}
    return target.spec.budgets.model_copy(update=overrides)


def tolerance_for(target, precision: str, request) -> Tolerance:
    overrides = {k: v for k, v in (("min_cosine", request.min_cosine), ("max_top1_drop", request.max_top1_drop),
                                   ("min_top1_agreement", request.min_top1_agreement)) if v is not None}
    return target.spec.tolerances[Precision(precision)].model_copy(update=overrides)


def toolchain() -> dict:
    versions = {"vdeploy": __version__, "python": platform.python_version()}
    for package in TOOLCHAIN_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
