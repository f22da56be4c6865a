"""The manifest (schema vdeploy.manifest/1): the judged BuildState written out, every null with its reason.

BuildState (after the plan's judge stage) + bundle file entries -> manifest dict. Nothing is computed here.
What differs between two builds of the same inputs (latency samples, power, peak memory, the estimate's calibration
against the measured latency, stage timings, where a cached build came from) sits in one section, `measured`, so
two manifests diff clean everywhere else (bar `verdict` / `violations` when a figure is over a budget).
"""

from __future__ import annotations

import importlib.metadata
import platform

from vdeploy import __version__
from vdeploy.bundle import SCHEMA
from vdeploy.strict_json import with_reasons

TOOLCHAIN_PACKAGES = ("torch", "onnx", "onnxruntime", "onnxscript", "onnx-ir", "onnxsim")  # + the backend's own


MEASURED = ("latency_ms", "power_w", "peak_mem_mb")  # figures that moved into `measured` (flat before)


def measured(doc: dict, name: str):
    """A measured figure: from a manifest's `measured` section, or from a flat document (a `vdeploy validate` report,
    a manifest written before the section existed)."""
    section = doc.get("measured")
    return section.get(name) if isinstance(section, dict) and name in section else doc.get(name)


def serialize(state, files: list[dict], cache: dict | None = None) -> dict:
    """`cache`: where the build cache stands for this build (build_cache.note), kept in the measured section."""
    loaded, exported, canonical = state.shared.loaded, state.exported, state.canonical
    figures, judgement = state.figures, state.judgement
    estimate = dict(state.estimate) if state.estimate else state.estimate
    calibration = estimate.pop("calibration", None) if estimate else None
    reason = {**figures.missing, **({"unverified": list(judgement.unverified)} if judgement.unverified else {})}
    return with_reasons(
        {  # strict JSON: a non-finite figure becomes null, named in reason.non_finite
            "schema": SCHEMA,
            "target": state.target.name,
            "backend": state.backend.name,
            "precision": state.precision,
            "model": {"path": loaded.source, "sha256": loaded.sha256, "format": loaded.format.value},
            "files": files,
            "inputs": [{"name": k, "shape": list(v.shape[1:]), "dtype": str(v.dtype)} for k, v in state.feeds.items()],
            "outputs": [
                {"name": k, "shape": list(v.shape[1:]), "dtype": str(v.dtype)} for k, v in state.expected.items()
            ],
            "coverage": state.coverage.to_manifest(),
            "numerics": {
                **state.numerics.to_manifest(),
                "inputs": state.shared.samples_source,
                "outputs_from": state.outputs_source,
            },
            "size_mb": round(figures.size_mb, 4),
            "budgets": judgement.budgets,
            "violations": [v.to_manifest() for v in judgement.violations],
            "verdict": judgement.verdict.value,
            "toolchain": {**toolchain(), **state.backend.toolchain()},
            "reason": reason,
            "artifact": state.artifact.to_dict(),
            "backend_options": state.options.model_dump(mode="json") if state.options is not None else None,
            "export": {
                "exporter": exported.exporter,
                "opset": exported.opset,
                "notes": list(exported.notes),
                "simplified": canonical.simplified,
                "simplify_note": canonical.note,
            },
            "estimate": estimate,
            "precision_info": state.lowered.info,
            "runtime_pick": state.runtime_pick,
            "accuracy": state.accuracy.to_manifest() if state.accuracy else None,
            "pruning": state.pruning.to_manifest() if state.pruning else None,
            "measured": {
                "latency_ms": figures.latency_manifest(),
                "power_w": figures.power,
                "peak_mem_mb": round(figures.peak_mem_mb, 1) if figures.peak_mem_mb else None,
                "estimate_calibration": calibration,
                "stage_seconds": dict(state.timings),
                "cache": cache,
            },
        }
    )


def toolchain() -> dict:
    versions = {"vdeploy": __version__, "python": platform.python_version()}
    for package in TOOLCHAIN_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
