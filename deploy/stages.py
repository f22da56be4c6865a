"""The stage functions of a build plan (deploy/plan.py); each reads and fills fields of one BuildState.

load: model + validation samples (shared) · reference: eager outputs (shared) · export + canonicalize (shared per
opset) · legalize · check · precision · compile · run (or the toolchain's simulated outputs) · compare · accuracy ·
judge (figures, estimates labelled, budgets and gates)
"""

from __future__ import annotations

import numpy as np

from vdeploy.errors import UnsupportedOpsError
from vdeploy.plan import BuildState

# ---- load and reference (shared by every target of the model) --------------------------------------------------


def load(state: BuildState) -> None:
    shared, request = state.shared, state.request
    if shared.samples:
        return
    from vdeploy import reference as ref
    from vdeploy.sources import load_request

    if shared.loaded is None:  # a caller may hand in the loaded model (vdeploy compare reads its input first)
        shared.loaded = load_request(request, state.progress)
    inputs = shared.loaded_inputs = ref.resolve_inputs(shared.loaded, request.input_shape)
    shared.input_specs = ref.sample_specs(shared.loaded, inputs, request.input_specs)
    shared.samples = ref.make_samples(inputs, request.samples, shared.input_specs)
    shared.samples_source = ref.samples_source(shared.input_specs)
    if (request.eval_data or request.calib) and len(inputs) == 1:
        shared.samples, shared.samples_source = _data_samples(
            request, inputs[0], request.samples, shared.loaded.mean_std
        )


def _data_samples(request, spec, count: int, recorded_mean_std):
    """{name: [count, *shape]} from --eval-data (preferred) or --calib, and a line saying where they came from: a
    low-precision artifact calibrated on real data is judged on in-distribution inputs."""
    if request.eval_data:
        from vdeploy.validate.accuracy import load_eval_data

        data, _ = load_eval_data(request.eval_data, spec.name, spec.shape)
        where = f"--eval-data {request.eval_data}"
    else:
        from vdeploy.calibration import load_calibration
        from vdeploy.lower_precision import preprocessing_for

        calib = load_calibration(
            request.calib,
            {spec.name: spec.shape},
            limit=count,
            preprocessing=preprocessing_for(request, recorded_mean_std),
        )
        data, where = next(iter(calib.inputs.values())), f"--calib {calib.source}"
    data = np.asarray(data, dtype=spec.dtype)[:count].reshape(-1, *spec.shape)
    return {spec.name: data}, f"first {len(data)} samples of {where}"


def describe_reference(state: BuildState) -> str | None:
    if state.shared.reference is not None:
        return None
    return (
        "running the reference (PyTorch eager)"
        if state.shared.loaded.is_torch
        else "running the reference (ONNX Runtime)"
    )


def reference(state: BuildState) -> None:
    from vdeploy import reference as ref

    shared = state.shared
    if shared.reference is None:
        shared.reference = ref.reference_outputs(shared.loaded, shared.samples)
        ref.check_finite_reference(shared.reference, shared.loaded, shared.loaded_inputs, shared.input_specs)


# ---- graphs --------------------------------------------------------------------------------------------------


def describe_export(state: BuildState) -> str | None:
    opset = state.target.spec.opset
    return None if opset in state.shared.exports else f"exporting to ONNX (opset {opset}), canonicalizing"


def export(state: BuildState) -> None:
    """(ExportResult, CanonicalizeResult) at the target's opset, exported once per opset and model."""
    from vdeploy.export import export_onnx
    from vdeploy.graph_passes.canonicalize import canonicalize

    shared, opset = state.shared, state.target.spec.opset
    if opset not in shared.exports:
        example = tuple(_torch_tensors(shared.samples)) if shared.loaded.is_torch else ()
        exported = export_onnx(shared.loaded, example, opset)
        shared.exports[opset] = (exported, canonicalize(exported.model))
    state.exported, state.canonical = shared.exports[opset]


def _torch_tensors(samples: dict[str, np.ndarray]):
    import torch

    return [torch.from_numpy(a[0]) for a in samples.values()]


def legalize(state: BuildState) -> None:
    """The canonical graph legalized for the target's op set; instruments see the graph after each rule family."""
    import onnx_ir as ir

    from vdeploy.graph_passes.coverage import coverage_of
    from vdeploy.graph_passes.legalize import legalize as run_legalize

    def after_family(family, model, fired):
        for instrument in state.instruments:
            instrument.after_rules(family, model, fired, state)

    model = ir.serde.deserialize_model(state.canonical.model)
    result = run_legalize(
        model,
        state.target.op_set,
        fallback=state.target.spec.fallback,
        specs=_rule_specs(state.request),  # None: every rule family (ALL_SPECS)
        after_spec=after_family,
    )
    finish_legal(result.model)
    state.legal = ir.serde.serialize_model(result.model)
    state.legalized = result
    state.coverage = coverage_of(state.canonical.model, state.legal, result, state.target.op_set, state.target.unknown)


def _rule_specs(request):
    if not request.forms:
        return request.rule_specs
    from vdeploy.fit.forms import with_forms

    return with_forms(request.rule_specs, request.forms)


def finish_legal(model) -> None:
    """What every legalized onnx-ir model gets before serialization."""
    import onnx_ir.passes.common as common_passes

    common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    common_passes.RemoveUnusedOpsetsPass()(model)  # e.g. the vdeploy.internal import once its ops are gone


def check_legal(state: BuildState) -> None:
    if state.coverage.unsupported:
        name = state.target.name
        raise UnsupportedOpsError(
            f"target {name} cannot run op(s) {', '.join(state.coverage.unsupported)}",
            f"run `vdeploy coverage MODEL --target {name}` for the table",
        )


def lower_precision(state: BuildState) -> None:
    from vdeploy.lower_precision import lower_precision as lower

    state.lowered = lower(
        state.legal, state.target, state.precision, state.request, state.progress, state.shared.loaded.mean_std
    )


# ---- the artifact ----------------------------------------------------------------------------------------------


def describe_compile(state: BuildState) -> str:
    from vdeploy.backends import backend_class

    backend = backend_class(state.target.backend)()
    return f"compiling with {backend.name} {backend.version() if backend.available() else ''}".rstrip()


def compile_artifact(state: BuildState) -> None:
    from vdeploy.backends import get_backend

    state.backend = get_backend(state.target.backend)
    state.options = state.target.backend_options(state.request.backend_overrides())
    state.artifact = state.backend.compile(compile_job(state))
    if state.target.spec.handoff:
        (state.work_dir / "HANDOFF.txt").write_text(state.target.spec.handoff.strip() + "\n")


def compile_job(state: BuildState):
    """The backend's CompileJob for this state's lowered model (the build's compile, and debug's layer analysis)."""
    from vdeploy.backends.base import CompileJob

    lowered = state.lowered
    calibration = lowered.calibration
    return CompileJob(
        lowered.model,
        state.precision,
        state.work_dir,
        state.target,
        state.options,
        state.progress,
        state.feeds,
        calibration=(lambda: calibration) if calibration is not None else None,
        source=state.shared.loaded,
        float_layers=lowered.float_layers,
    )


def _timed_iters(state: BuildState) -> int:
    return 0 if state.backend.host_latency_reason(state.artifact) else state.request.iters


def describe_run(state: BuildState) -> str:
    if state.artifact.detail("simulated"):
        return f"validating in {state.artifact.detail('simulated').get('source', 'the simulator')}"
    return f"validating on this host ({state.request.samples} samples, {_timed_iters(state)} timed runs)"


def run_artifact_stage(state: BuildState) -> None:
    """Run the artifact on the validation samples (a child process), or take the outputs the toolchain's simulator
    produced at build time (the artifact itself cannot run on this host); timed where timing it means something."""
    from vdeploy.validate.isolate import RunResult, run_artifact

    simulated, iters = state.artifact.detail("simulated"), _timed_iters(state)
    if simulated:
        with np.load(state.work_dir / simulated["outputs"]) as data:
            outputs = [data[f"out{i}"] for i in range(len(data.files))]
        state.outputs_source = simulated.get("source", "simulator")
        timed = (
            run_artifact(
                state.artifact,
                state.work_dir,
                state.feeds,
                warmup=state.request.warmup,
                iters=iters,
                env=state.lowered.run_env,
            )
            if iters
            else None
        )
        state.run = RunResult(
            outputs,
            timed.latency if timed else None,
            timed.energy if timed else None,
            timed.power_reason if timed else "not timed on this host",
            timed.peak_rss_mb if timed else None,
        )
        return
    state.run = run_artifact(
        state.artifact, state.work_dir, state.feeds, warmup=state.request.warmup, iters=iters, env=state.lowered.run_env
    )


def compare_outputs(state: BuildState) -> None:
    from vdeploy.validate.compare import compare

    expected = state.expected
    state.numerics = compare(expected, dict(zip(expected, state.run.outputs)))


def describe_accuracy(state: BuildState) -> str | None:
    if state.request.eval_data is None:
        return None
    return f"measuring top-1 on the labelled samples of {state.request.eval_data}"


def accuracy(state: BuildState) -> None:
    """Top-1 of reference and artifact on --eval-data (None without it)."""
    request = state.request
    if request.eval_data is None or state.artifact.detail("simulated"):
        return
    from vdeploy.reference import reference_outputs
    from vdeploy.validate.accuracy import Accuracy, load_eval_data, top1
    from vdeploy.validate.isolate import run_artifact

    ((name, sample),) = state.feeds.items()  # single-input image models
    key = str(request.eval_data)
    if key not in state.shared.evaluation:  # the data and the reference's top-1 are the same for every target
        inputs, labels = load_eval_data(request.eval_data, name, tuple(sample.shape[1:]))
        ref = reference_outputs(state.shared.loaded, {name: inputs})[0]
        state.shared.evaluation[key] = (inputs, labels, top1(ref, labels))
    inputs, labels, reference_top1 = state.shared.evaluation[key]
    out = run_artifact(
        state.artifact, state.work_dir, {name: inputs}, warmup=0, iters=0, env=state.lowered.run_env
    ).outputs[0]
    state.accuracy = Accuracy(len(labels), reference_top1, top1(out, labels))


# ---- judging -------------------------------------------------------------------------------------------------


def judge_state(state: BuildState) -> None:
    from vdeploy.judging import figures_of_run, judge_figures

    files = _artifact_bytes(state)
    state.estimate = state.artifact.detail("estimate") or roofline_estimate(state)
    accuracy_reason = None
    if state.request.eval_data is not None and state.accuracy is None:
        accuracy_reason = (
            f"top-1 needs the artifact run on the labelled data; {state.outputs_source} outputs "
            "cover the validation samples only"
        )
    state.figures = figures_of_run(
        state.run,
        size_mb=files / 1e6,
        host_reason=state.backend.host_latency_reason(state.artifact),
        estimate=state.estimate,
        top1_drop_pt=state.accuracy.drop_pt if state.accuracy else None,
        accuracy_reason=accuracy_reason,
    )
    if state.lowered.warning:
        state.figures.missing["calibration"] = state.lowered.warning
    state.judgement = judge_figures(
        state.request.budgets_for(state.target),
        state.request.tolerance_for(state.target, state.precision),
        state.numerics,
        state.figures,
        allow_estimates=state.target.spec.allow_estimates,
        deferred=state.artifact.deferred,
    )


def _artifact_bytes(state: BuildState) -> int:
    return sum((state.work_dir / f).stat().st_size for f in state.artifact.files)


def roofline_estimate(state: BuildState) -> dict | None:
    """Roofline latency/power from the legal graph and the target's hardware figures (None without figures).
    Where latency was really measured, the estimate is calibrated against it and its error reported."""
    from vdeploy.targets import Precision

    hardware, precision = state.target.spec.hardware, state.precision
    if hardware is None or Precision(precision) not in hardware.peak_gops:
        return None
    from vdeploy.validate.estimate import calibrate, count_cost, estimate

    cost = count_cost(state.legal)
    result = estimate(cost, hardware, precision).to_manifest()
    measured = state.run.latency
    if measured is not None:
        calibration = calibrate(measured.p50, cost, hardware, precision)
        result["calibration"] = {
            "measured_p50_ms": round(measured.p50, 4),
            "efficiency": calibration.efficiency,
            "error_pct": round(calibration.error_pct, 1),
        }
    return result
