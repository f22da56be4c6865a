"""The build pipeline: load -> reference -> export -> canonicalize -> legalize -> compile -> validate -> bundle.

BuildRequest -> prepare() once (load, seeded samples, eager reference) -> per target: export (cached per opset),
legalize for its op set, compile, run, judge, write the bundle -> BuildResult. A failure before a bundle is
finished raises a VdeployError and leaves no bundle directory behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from vdeploy.bundle import BundleWriter, check_out_dir
from vdeploy.errors import TargetError, UnsupportedOpsError, VdeployError
from vdeploy.targets import Target, load_catalog

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuildRequest:
    model: str
    targets: tuple[str, ...]
    out_dir: Path = Path("out")
    precision: str | None = None
    input_shape: tuple[int, ...] | None = None
    max_latency_ms: float | None = None
    max_power_w: float | None = None
    trust_pickle: bool = False
    catalog: Path | None = None
    calib: Path | None = None  # INT8 calibration: a folder of images, a .npy or .npz (None: seeded random + warning)
    mean: tuple[float, ...] | None = None  # image preprocessing for --calib folders
    std: tuple[float, ...] | None = None
    int8_sensitive: int | str = "auto"  # int8 hook: "auto" (fewest float layers until the gate holds) or N layers
    eval_data: Path | None = None  # labelled .npz: top-1 of the artifact beside the reference, gated by max_top1_drop
    max_top1_drop: float | None = None  # percentage points
    min_cosine: float | None = None  # numerics gate overrides
    min_top1_agreement: float | None = None
    tune_trials: int | None = None  # TVM: MetaSchedule budget for tasks without a cached record (None: target's)
    tuning_db: tuple[Path, ...] = ()  # TVM: bundles or tuning/ folders whose records seed the cache
    samples: int = 8
    warmup: int = 10
    iters: int = 50


@dataclass(frozen=True)
class BuildResult:
    target: str
    manifest: dict
    bundle: Path

    @property
    def exit_code(self) -> int:
        return 3 if self.manifest["verdict"] == "fail" else 0


@dataclass(frozen=True)
class Prepared:
    """What every target shares: the loaded model, the seeded samples and the reference outputs."""

    loaded: object  # vdeploy.load.LoadedModel
    samples: dict[str, np.ndarray]
    reference: list[np.ndarray]
    samples_source: str = "seeded standard normal"
    exports: dict = field(default_factory=dict)  # opset -> (ExportResult, CanonicalizeResult)
    evaluation: dict = field(default_factory=dict)  # --eval-data path -> (inputs, labels, reference top-1)


def resolve_targets(names, catalog_path) -> list[Target]:
    catalog = load_catalog(catalog_path)
    if list(names) == ["all"]:
        return list(catalog)
    return [catalog.get(name) for name in names]


def prepare(model: str, *, input_shape=None, trust_pickle=False, samples=8, request=None,
            progress: Progress) -> Prepared:
    """Load the model and run the reference. The validation inputs are the first samples of --eval-data or --calib
    when given (a low-precision artifact calibrated on real data is judged on in-distribution inputs), else seeded
    standard-normal samples."""
    from vdeploy.load import load_model
    from vdeploy.reference import make_samples, reference_outputs, resolve_inputs

    progress(f"loading {model}")
    loaded = load_model(model, trust_pickle=trust_pickle)
    inputs = resolve_inputs(loaded, input_shape)
    sample_arrays, source = make_samples(inputs, samples), "seeded standard normal"
    if request is not None and (request.eval_data or request.calib) and len(inputs) == 1:
        sample_arrays, source = _data_samples(request, inputs[0], samples, loaded.mean_std)
    progress("running the reference (PyTorch eager)" if loaded.is_torch else "running the reference (ONNX Runtime)")
    return Prepared(loaded, sample_arrays, reference_outputs(loaded, sample_arrays), source)


def _data_samples(request, spec, count: int, recorded_mean_std):
    """{name: [count, *shape]} from --eval-data (preferred) or --calib, and a line saying where they came from."""
    if request.eval_data:
        from vdeploy.validate.accuracy import load_eval_data

        data, _ = load_eval_data(request.eval_data, spec.name, spec.shape)
        where = f"--eval-data {request.eval_data}"
    else:
        from vdeploy.calibration import load_calibration
        from vdeploy.lower_precision import preprocessing_for

        calib = load_calibration(request.calib, {spec.name: spec.shape}, limit=count,
                                 preprocessing=preprocessing_for(request, recorded_mean_std))
        data, where = next(iter(calib.inputs.values())), f"--calib {calib.source}"
    data = np.asarray(data, dtype=spec.dtype)[:count].reshape(-1, *spec.shape)
    return {spec.name: data}, f"first {len(data)} samples of {where}"


def exported_for(prepared: Prepared, opset: int, progress: Progress):
    """(ExportResult, CanonicalizeResult) at this opset, exported once per opset."""
    from vdeploy.export import export_onnx
    from vdeploy.graph_passes.canonicalize import canonicalize

    if opset not in prepared.exports:
        progress(f"exporting to ONNX (opset {opset})")
        example = tuple(_torch_tensors(prepared.samples)) if prepared.loaded.is_torch else ()
        exported = export_onnx(prepared.loaded, example, opset)
        progress("canonicalizing the graph")
        prepared.exports[opset] = (exported, canonicalize(exported.model))
    return prepared.exports[opset]


def legalize_for(canonical_model, target: Target):
    """(legalized onnx.ModelProto, Coverage) for a target's op set; the model is not yet checked for leftovers."""
    import onnx_ir as ir

    from vdeploy.graph_passes.coverage import coverage_of
    from vdeploy.graph_passes.legalize import legalize

    model = ir.serde.deserialize_model(canonical_model)
    result = legalize(model, target.op_set, fallback=target.spec.fallback)
    finish_legal(result.model)
    legal = ir.serde.serialize_model(result.model)
    return legal, coverage_of(canonical_model, legal, result, target.op_set)


def finish_legal(model) -> None:
    """What every legalized onnx-ir model gets before serialization (bisect's stages too)."""
    import onnx_ir.passes.common as common_passes

    common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    common_passes.RemoveUnusedOpsetsPass()(model)  # e.g. the vdeploy.internal import once its ops are gone


def require_legal(coverage, target: Target) -> None:
    if coverage.unsupported:
        raise UnsupportedOpsError(f"target {target.name} cannot run op(s) {', '.join(coverage.unsupported)}",
                                  f"run `vdeploy coverage MODEL --target {target.name}` for the table")


def build_target(prepared: Prepared, target: Target, request: BuildRequest, progress: Progress) -> BuildResult:
    from vdeploy.backends import get_backend
    from vdeploy.lower_precision import lower_precision
    from vdeploy.manifest import build_manifest
    from vdeploy.validate.compare import compare
    from vdeploy.validate.isolate import run_artifact

    precision = precision_for(target, request.precision)
    backend = get_backend(target.backend.value)
    exported, canonical = exported_for(prepared, target.spec.opset, progress)
    progress(f"legalizing for {target.name}")
    model, coverage = legalize_for(canonical.model, target)
    require_legal(coverage, target)
    lowered = lower_precision(model, target, precision, request, progress, prepared.loaded.mean_std)

    with BundleWriter(request.out_dir, f"{prepared.loaded.stem}-{target.name}") as writer:
        progress(f"compiling with {backend.name} {backend.version()}")
        artifact = backend.compile(lowered.model, precision, writer.tmp, target=target, request=request,
                                   progress=progress)
        if target.spec.handoff:
            (writer.tmp / "HANDOFF.txt").write_text(target.spec.handoff.strip() + "\n")
        latency_reason = backend.host_latency_reason(artifact)
        iters = 0 if latency_reason else request.iters
        progress(f"validating on this host ({request.samples} samples, {iters} timed runs)")
        feeds = dict(zip(graph_inputs(model), prepared.samples.values()))
        run = run_artifact(artifact, writer.tmp, feeds, warmup=request.warmup, iters=iters, env=lowered.run_env)
        expected = dict(zip([o.name for o in model.graph.output], prepared.reference))
        numerics = compare(expected, dict(zip(expected, run.outputs)))
        accuracy = _accuracy(prepared, artifact, writer.tmp, feeds, request, lowered.run_env, progress)
        np.savez(writer.tmp / "reference_io.npz", **{f"input:{k}": v for k, v in feeds.items()},
                 **{f"output:{k}": v for k, v in expected.items()})
        manifest = build_manifest(request=request, target=target, backend=backend, precision=precision,
                                  loaded=prepared.loaded, exported=exported, canonical=canonical, model=model,
                                  coverage=coverage, artifact=artifact, files=writer.file_entries(), feeds=feeds,
                                  expected=expected, numerics=numerics, run=run, lowered=lowered, accuracy=accuracy,
                                  samples_source=prepared.samples_source)
        from vdeploy.report_html import render_html

        (writer.tmp / "report.html").write_text(render_html(manifest))  # derived from the manifest: not hashed
        bundle = writer.finish(manifest)
    return BuildResult(target.name, manifest, bundle)


@dataclass(frozen=True)
class Outcome:
    """One target of a build: its result, or the error that stopped it (other targets still build)."""

    target: str
    result: BuildResult | None = None
    error: VdeployError | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.error else self.result.exit_code


def build(request: BuildRequest, progress: Progress = lambda _: None) -> list[Outcome]:
    """Build every requested target from one load and one reference run. With one target its error is raised."""
    targets = resolve_targets(request.targets, request.catalog)
    check_out_dir(request.out_dir)
    prepared = prepare(request.model, input_shape=request.input_shape, trust_pickle=request.trust_pickle,
                       samples=request.samples, request=request, progress=progress)
    outcomes = []
    for target in targets:
        try:
            outcomes.append(Outcome(target.name, build_target(prepared, target, request, progress)))
        except VdeployError as exc:
            if len(targets) == 1:
                raise
            progress(f"{target.name}: {exc.one_line()}")
            outcomes.append(Outcome(target.name, error=exc))
    return outcomes


def overall_exit_code(outcomes: list[Outcome]) -> int:
    """1 if any target errored, else 3 if any failed a gate, else 0."""
    codes = {o.exit_code for o in outcomes}
    return 1 if 1 in codes else 3 if 3 in codes else 0


def _accuracy(prepared: Prepared, artifact, bundle_dir, feeds, request, env, progress):
    """Top-1 of reference and artifact on --eval-data (None without it)."""
    if request.eval_data is None:
        return None
    from vdeploy.reference import reference_outputs
    from vdeploy.validate.accuracy import Accuracy, load_eval_data, top1
    from vdeploy.validate.isolate import run_artifact

    (name, sample), = feeds.items()  # single-input image models
    key = str(request.eval_data)
    if key not in prepared.evaluation:  # the data and the reference's top-1 are the same for every target
        inputs, labels = load_eval_data(request.eval_data, name, tuple(sample.shape[1:]))
        reference = reference_outputs(prepared.loaded, {name: inputs})[0]
        prepared.evaluation[key] = (inputs, labels, top1(reference, labels))
    inputs, labels, reference_top1 = prepared.evaluation[key]
    progress(f"measuring top-1 on {len(labels)} labelled samples ({request.eval_data})")
    artifact_out = run_artifact(artifact, bundle_dir, {name: inputs}, warmup=0, iters=0, env=env).outputs[0]
    return Accuracy(len(labels), reference_top1, top1(artifact_out, labels))


def precision_for(target: Target, requested: str | None) -> str:
    allowed = [p.value for p in target.spec.precisions]
    precision = requested or target.spec.default_precision.value
    if precision not in allowed:
        raise TargetError(f"target {target.name} does not offer precision {precision}",
                          f"choose one of: {', '.join(allowed)}")
    return precision


def graph_inputs(model) -> list[str]:
    """Names of an onnx.ModelProto's real inputs (graph inputs that are not initializers)."""
    initializers = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]


def _torch_tensors(samples: dict[str, np.ndarray]):
    import torch

    return [torch.from_numpy(a[0]) for a in samples.values()]


def coverage_for_targets(model: str, names: tuple[str, ...], *, input_shape=None, trust_pickle=False, catalog=None,
                         progress: Progress = lambda _: None) -> dict:
    """target name -> Coverage, without compiling anything (export once per opset, legalize per target)."""
    targets = resolve_targets(names, catalog)
    prepared = prepare(model, input_shape=input_shape, trust_pickle=trust_pickle, samples=1, progress=progress)
    results = {}
    for target in targets:
        _, canonical = exported_for(prepared, target.spec.opset, progress)
        progress(f"legalizing for {target.name}")
        results[target.name] = legalize_for(canonical.model, target)[1]
    return results
