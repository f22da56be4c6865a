"""The build pipeline: load -> export -> canonicalize -> legalize -> compile -> validate -> judge -> bundle.

BuildRequest -> BuildResult(manifest, bundle path, exit code). Every failure before the bundle is finished raises a
VdeployError and leaves no bundle directory behind.
"""

from __future__ import annotations

import importlib.metadata
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from vdeploy import __version__
from vdeploy.bundle import SCHEMA, BundleWriter
from vdeploy.errors import TargetError, UnsupportedOpsError
from vdeploy.targets import Budgets, Precision, Target, load_catalog

Progress = Callable[[str], None]
POWER_REASON = "no power meter in this vdeploy build: RAPL, NVML, tegrastats and estimate meters are not implemented yet"
TOOLCHAIN_PACKAGES = ("torch", "onnx", "onnxruntime", "onnxscript", "onnx-ir", "onnxsim", "openvino")


@dataclass(frozen=True)
class BuildRequest:
    model: str
    target: str
    out_dir: Path = Path("out")
    precision: str | None = None
    input_shape: tuple[int, ...] | None = None
    max_latency_ms: float | None = None
    max_power_w: float | None = None
    trust_pickle: bool = False
    catalog: Path | None = None
    samples: int = 8
    warmup: int = 10
    iters: int = 50


@dataclass(frozen=True)
class BuildResult:
    manifest: dict
    bundle: Path
    notes: tuple[str, ...] = field(default=())

    @property
    def exit_code(self) -> int:
        return 3 if self.manifest["verdict"] == "fail" else 0


def build(request: BuildRequest, progress: Progress = lambda _: None) -> BuildResult:
    from vdeploy.backends import get_backend
    from vdeploy.export import export_onnx
    from vdeploy.graph_passes.canonicalize import canonicalize
    from vdeploy.load import load_model
    from vdeploy.reference import make_samples, reference_outputs, resolve_inputs

    target = load_catalog(request.catalog).get(request.target)
    precision = _precision(target, request.precision)
    backend = get_backend(target.backend.value)

    progress(f"loading {request.model}")
    loaded = load_model(request.model, trust_pickle=request.trust_pickle)
    inputs = resolve_inputs(loaded, request.input_shape)
    samples = make_samples(inputs, request.samples)
    progress("running the reference (PyTorch eager)" if loaded.is_torch else "running the reference (ONNX Runtime)")
    reference = reference_outputs(loaded, samples)

    progress(f"exporting to ONNX (opset {target.spec.opset})")
    exported = export_onnx(loaded, tuple(_torch_tensors(samples)) if loaded.is_torch else (), target.spec.opset)
    progress("canonicalizing the graph")
    canonical = canonicalize(exported.model)
    progress(f"legalizing for {target.name}")
    model, coverage = _legalize(exported.model, canonical.model, target)

    name = f"{loaded.stem}-{target.name}"
    with BundleWriter(request.out_dir, name) as writer:
        progress(f"compiling with {backend.name} {backend.version()}")
        artifact = backend.compile(model, precision, writer.tmp)
        progress(f"validating on this host ({request.samples} samples, {request.iters} timed runs)")
        from vdeploy.validate.compare import compare
        from vdeploy.validate.isolate import run_artifact

        feeds = dict(zip(_graph_inputs(model), samples.values()))
        iters = 0 if backend.no_host_latency else request.iters
        run = run_artifact(artifact, writer.tmp, feeds, warmup=request.warmup, iters=iters)
        output_names = [o.name for o in model.graph.output]
        expected = dict(zip(output_names, reference))
        numerics = compare(expected, dict(zip(output_names, run.outputs)))
        np.savez(writer.tmp / "reference_io.npz", **{f"input:{k}": v for k, v in feeds.items()},
                 **{f"output:{k}": v for k, v in expected.items()})
        manifest = _manifest(request, target, backend, precision, loaded, exported, canonical, coverage,
                             artifact, writer, feeds, expected, numerics, run.latency)
        bundle = writer.finish(manifest)
    return BuildResult(manifest, bundle, exported.notes)


def _precision(target: Target, requested: str | None) -> str:
    allowed = [p.value for p in target.spec.precisions]
    precision = requested or target.spec.default_precision.value
    if precision not in allowed:
        raise TargetError(f"target {target.name} does not offer precision {precision}",
                          f"choose one of: {', '.join(allowed)}")
    return precision


def _legalize(exported, canonical, target: Target):
    from vdeploy.graph_passes.coverage import Coverage, check_op_set, op_counts

    unsupported, fallback = check_op_set(canonical, target.op_set, fallback=target.spec.fallback)
    coverage = Coverage(op_counts(exported), op_counts(canonical), unsupported=unsupported, fallback=fallback)
    if unsupported:
        raise UnsupportedOpsError(f"target {target.name} cannot run op(s) {', '.join(unsupported)}",
                                  f"run `vdeploy coverage MODEL --target {target.name}` for the table")
    return canonical, coverage


def _budgets(target: Target, request: BuildRequest) -> Budgets:
    overrides = {k: v for k, v in (("latency_ms", request.max_latency_ms), ("power_w", request.max_power_w))
                 if v is not None}
    return target.spec.budgets.model_copy(update=overrides)


def _manifest(request, target, backend, precision, loaded, exported, canonical, coverage, artifact, writer,
              feeds, expected, numerics, latency) -> dict:
    from vdeploy.validate.budgets import judge

    files = writer.file_entries()
    size_mb = sum(f["bytes"] for f in files if f["path"] in artifact.files) / 1e6
    tolerance = target.spec.tolerances[Precision(precision)]
    missing = {"power_w": POWER_REASON}
    if latency is None:
        missing["latency_ms"] = backend.no_host_latency or "not measured"
    judgement = judge(_budgets(target, request), tolerance, numerics=numerics, latency=latency,
                      size_mb=size_mb, power_w=None, missing=missing)
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
        "numerics": numerics.to_manifest(),
        "latency_ms": latency.to_manifest() if latency else None,
        "power_w": None,
        "size_mb": round(size_mb, 4),
        "budgets": judgement.budgets,
        "violations": [v.to_manifest() for v in judgement.violations],
        "verdict": judgement.verdict.value,
        "toolchain": _toolchain(),
        "reason": {**missing, **({"unverified": list(judgement.unverified)} if judgement.unverified else {})},
        "artifact": artifact.to_dict(),
        "export": {"exporter": exported.exporter, "opset": exported.opset, "notes": list(exported.notes),
                   "simplified": canonical.simplified, "simplify_note": canonical.note},
    }


def _toolchain() -> dict:
    versions = {"vdeploy": __version__, "python": platform.python_version()}
    for package in TOOLCHAIN_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _graph_inputs(model) -> list[str]:
    initializers = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]


def _torch_tensors(samples: dict[str, np.ndarray]):
    import torch

    return [torch.from_numpy(a[0]) for a in samples.values()]
