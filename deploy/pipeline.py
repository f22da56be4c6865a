"""Builds from a request: one plan per target (deploy/plan.py), sharing the load, reference and exports.

BuildRequest -> resolve targets -> refuse bundle paths that are not bundles / hold inputs -> per target: a build
cache hit (deploy/build_cache.py), or BuildState -> run_plan(plan(target)) inside a BundleWriter
-> reference_io.npz, manifest.json (pure serialization of the state), report.html -> BuildResult (-> the cache).
A failure before a bundle is finished raises a VdeployError and leaves no bundle directory behind; SIGTERM/SIGHUP
are raised like Ctrl-C meanwhile, and temporary files live in the build's own scratch dir (deploy/scratch.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vdeploy import interrupts, scratch
from vdeploy.bundle import BundleWriter, check_inputs_outside, check_out_dir, check_replaceable
from vdeploy.errors import TargetError, VdeployError
from vdeploy.host_errors import host_error, refuse_dangling_link
from vdeploy.plan import BuildState, Shared, plan, run_plan
from vdeploy.signing import sign_if_asked
from vdeploy.targets import Budgets, Precision, Target, Tolerance, load_catalog

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuildRequest:
    model: str  # a path or timm:NAME; for an in-memory `source`, the name its bundle gets
    targets: tuple[str, ...]
    out_dir: Path = Path("out")
    precision: str | None = None
    input_shape: tuple[int, ...] | None = None
    max_latency_ms: float | None = None
    max_power_w: float | None = None
    budgets: tuple[tuple[str, float], ...] = ()  # further budget overrides by name (the Python API's budgets=)
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
    input_specs: tuple[str, ...] = ()  # --input-spec NAME:KIND[:ARGS]: how seeded validation inputs are drawn
    arch: str | None = None  # --arch timm:NAME | package.module:factory (then `model` is the weights file)
    sign_key: Path | None = None  # --sign: ed25519 private key (PEM); the bundle gets signature.json (signing.py)
    samples: int = 8
    warmup: int = 10
    iters: int = 50
    rule_specs: tuple | None = None  # legalization rule families (None: all); a plan choice, not a CLI option
    prune_heads: Any = None  # prune_stage.HeadPruning: heads kept per block, or a count by measured importance
    runtime: str | None = None  # one of the target's runtimes (None: its backend, or the measured pick)
    forms: tuple[tuple[str, str], ...] = ()  # (op family, form) choices for legalization (vdeploy.fit.forms)
    source: Any = field(default=None, compare=False)  # an in-memory nn.Module / ExportedProgram / ModelProto
    example_inputs: tuple | None = field(default=None, compare=False)  # export inputs for an nn.Module source

    @property
    def bundle_stem(self) -> str:
        """The <model> of OUT/<model>-<target>, known before loading (the LoadedModel's stem)."""
        if self.source is not None:
            return self.model
        if self.arch is None and self.model.startswith("timm:"):
            return self.model.removeprefix("timm:")
        return Path(self.model).stem

    @property
    def model_label(self) -> str:
        if self.source is not None:
            return f"in-memory {type(self.source).__name__} {self.model!r}"
        return self.model + (f" as {self.arch}" if self.arch else "")

    def backend_overrides(self) -> dict:
        """Command-line settings that land in a backend's typed options (keys it lacks are ignored)."""
        mean = std = None
        if self.mean is not None or self.std is not None:  # rknn: --mean/--std baked into the .rknn
            from vdeploy.calibration import IMAGENET_MEAN, IMAGENET_STD

            mean, std = self.mean or IMAGENET_MEAN, self.std or IMAGENET_STD
        return {
            "tune_trials": self.tune_trials,
            "tuning_db": tuple(str(p) for p in self.tuning_db) or None,
            "mean": mean,
            "std": std,
        }

    def budgets_for(self, target: Target) -> Budgets:
        overrides = dict(self.budgets)
        overrides.update(
            {k: v for k, v in (("latency_ms", self.max_latency_ms), ("power_w", self.max_power_w)) if v is not None}
        )
        return target.spec.budgets.model_copy(update=overrides)

    def tolerance_for(self, target: Target, precision: str) -> Tolerance:
        overrides = {
            k: v
            for k, v in (
                ("min_cosine", self.min_cosine),
                ("max_top1_drop", self.max_top1_drop),
                ("min_top1_agreement", self.min_top1_agreement),
            )
            if v is not None
        }
        return target.spec.tolerances[Precision(precision)].model_copy(update=overrides)


@dataclass(frozen=True)
class BuildResult:
    """One target's build: the bundle's path, the manifest (its main fields as attributes), stage timings."""

    target: str
    manifest: dict
    bundle: Path
    timings: dict = field(default_factory=dict, compare=False)  # stage -> seconds (not in the manifest)

    verdict = property(lambda self: self.manifest["verdict"])  # "pass" | "fail" | "unverified"
    passed = property(lambda self: self.manifest["verdict"] == "pass")
    backend = property(lambda self: self.manifest["backend"])
    precision = property(lambda self: self.manifest["precision"])
    numerics = property(lambda self: self.manifest["numerics"])
    latency_ms = property(lambda self: self.manifest["measured"]["latency_ms"])
    power_w = property(lambda self: self.manifest["measured"]["power_w"])
    size_mb = property(lambda self: self.manifest["size_mb"])
    coverage = property(lambda self: self.manifest["coverage"])
    violations = property(lambda self: self.manifest["violations"])
    reason = property(lambda self: self.manifest["reason"])

    @property
    def exit_code(self) -> int:
        return 3 if self.manifest["verdict"] == "fail" else 0


@dataclass(frozen=True)
class Outcome:
    """One target of a build: its result, or the error that stopped it (other targets still build)."""

    target: str
    result: BuildResult | None = None
    error: VdeployError | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.error else self.result.exit_code


def resolve_targets(names, catalog_path) -> list[Target]:
    catalog = load_catalog(catalog_path)
    if list(names) == ["all"]:
        return list(catalog)
    return [catalog.get(name) for name in names]


def precision_for(target: Target, requested: str | None) -> str:
    allowed = [p.value for p in target.spec.precisions]
    precision = requested or target.spec.default_precision.value
    if precision not in allowed:
        raise TargetError(
            f"target {target.name} does not offer precision {precision}", f"choose one of: {', '.join(allowed)}"
        )
    return precision


def new_state(request: BuildRequest, target: Target, shared: Shared, progress: Progress) -> BuildState:
    if request.runtime:
        from vdeploy.runtimes import with_runtime

        target = with_runtime(target, request.runtime, request.catalog)
    return BuildState(request, target, shared, progress, precision=precision_for(target, request.precision))


def build_target(state: BuildState, instruments=None, cache=None) -> BuildResult:
    """Run the target's whole plan inside a bundle writer and write the bundle (and store it in `cache`)."""
    request, target = state.request, state.target
    name = f"{state.shared.loaded.stem}-{target.name}"
    refuse_dangling_link(request.out_dir / name, "the bundle path")
    try:
        return _write_bundle(state, name, instruments, cache)
    except OSError as exc:  # a full disk while writing the bundle is the host's condition: say where
        mapped = host_error(exc, str(request.out_dir / name))
        if mapped is None:
            raise
        raise mapped from None


def _write_bundle(state: BuildState, name: str, instruments, cache) -> BuildResult:
    from vdeploy.manifest import serialize
    from vdeploy.report_html import render_html

    request, target = state.request, state.target
    with BundleWriter(request.out_dir, name) as writer:
        state.work_dir = writer.tmp
        run_plan(plan(target, request), state, instruments)
        np.savez(
            writer.tmp / "reference_io.npz",
            **{f"input:{k}": v for k, v in state.feeds.items()},
            **{f"output:{k}": v for k, v in state.expected.items()},
        )
        manifest = serialize(state, writer.file_entries(), cache.note(target) if cache else None)
        (writer.tmp / "report.html").write_text(render_html(manifest))  # derived from the manifest: not hashed
        if cache:  # stored unsigned: a restore writes its own manifest (measured.cache) and signs that
            cache.store(target, writer.tmp, manifest, writer.final)
        sign_if_asked(request, writer.tmp, manifest)  # last: the signature covers every file
        bundle = writer.finish(manifest)
    return BuildResult(target.name, manifest, bundle, dict(state.timings))


def build(request: BuildRequest, progress: Progress = lambda _: None, *, use_cache: bool = True) -> list[Outcome]:
    """Build every requested target from one load and one reference run. With one target its error is raised.
    An unchanged target comes from the build cache unless `use_cache` is False (then it is rebuilt and re-stored)."""
    from vdeploy.build_cache import BuildCache

    targets = resolve_targets(request.targets, request.catalog)
    refuse_dangling_link(request.out_dir, "--out")
    check_out_dir(request.out_dir)
    if request.sign_key is not None:  # a bad key fails before any work
        from vdeploy.signing import load_private_key

        load_private_key(request.sign_key)
    check_bundle_paths(request, targets)
    with interrupts.handled(), scratch.build_scratch():
        cache = BuildCache(request, targets, reuse=use_cache, progress=progress)
        outcomes = {t.name: Outcome(t.name, hit) for t in targets if (hit := cache.restore(t, request.bundle_stem))}
        todo = [t for t in targets if t.name not in outcomes]
        shared = Shared()
        if todo:
            run_plan(plan(todo[0], request, until="reference"), new_state(request, todo[0], shared, progress))
        for target in todo:
            try:
                result = build_target(new_state(request, target, shared, progress), cache=cache)
                outcomes[target.name] = Outcome(target.name, result)
            except VdeployError as exc:
                if len(targets) == 1:
                    raise
                progress(f"{target.name}: {exc.one_line()}")
                outcomes[target.name] = Outcome(target.name, error=exc)
    return [outcomes[t.name] for t in targets]


def check_bundle_paths(request: BuildRequest, targets: list[Target]) -> None:
    """Before any work: each bundle this build replaces is a vdeploy bundle (or absent) holding none of its inputs."""
    named = () if request.source is not None else (request.model,)
    inputs = [Path(p) for p in (*named, request.calib, request.eval_data) if p and not str(p).startswith("timm:")]
    for target in targets:
        final = request.out_dir / f"{request.bundle_stem}-{target.name}"
        refuse_dangling_link(final, "the bundle path")  # the more telling message first
        check_replaceable(final)
        check_inputs_outside(final, inputs)


def overall_exit_code(outcomes: list[Outcome]) -> int:
    """1 if any target errored, else 3 if any failed a gate, else 0."""
    codes = {o.exit_code for o in outcomes}
    return 1 if 1 in codes else 3 if 3 in codes else 0


def coverage_for_targets(request: BuildRequest, progress: Progress = lambda _: None) -> dict:
    """target name -> Coverage: each target's plan up to legalization (no reference run, no compile)."""
    shared, results = Shared(), {}
    for target in resolve_targets(request.targets, request.catalog):
        state = new_state(request, target, shared, progress)
        run_plan(plan(target, request, until="legalize"), state)
        results[target.name] = state.coverage
    return results


def graph_inputs(model) -> list[str]:
    """Names of an onnx.ModelProto's real inputs (graph inputs that are not initializers)."""
    initializers = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]


def legalize_for(canonical_model, target: Target):
    """(legalized onnx.ModelProto, Coverage) of a canonical graph for a target's op set (the plan's legalize stage
    alone, for tools and tests that start from a graph); the model is not yet checked for leftovers."""
    from types import SimpleNamespace

    from vdeploy import stages

    state = BuildState(BuildRequest(model="", targets=(target.name,)), target)
    state.canonical = SimpleNamespace(model=canonical_model)
    stages.legalize(state)
    return state.legal, state.coverage
