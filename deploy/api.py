"""The public Python API: what the CLI does, for code. Errors are the CLI's (VdeployError: .message, .hint).

vdeploy.build(model, target=..., example_inputs=..., precision=..., budgets=..., out=...) -> BuildResult
vdeploy.coverage(model, target=...) -> {target: Coverage} · vdeploy.validate(bundle) -> ValidationResult
vdeploy.targets() -> [TargetInfo] · vdeploy.debug(model, target=...) -> BisectReport
vdeploy.keygen(path) -> (private, public) · build(..., sign_key=PEM) signs the bundle · validate(..., verify_key=PUB)
`model`: a path or timm:NAME, an nn.Module (exported with example_inputs), a torch.export.ExportedProgram or an
onnx.ModelProto. Every build option of the CLI is a keyword here (calib=, eval_data=, int8_sensitive=, ...), and
prune_heads= (attention-head pruning: a count, or {block id: heads kept}; see vdeploy.prune_stage, vdeploy.prune).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from vdeploy.errors import UsageError

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ValidationResult:
    bundle: Path
    report: dict

    verdict = property(lambda self: self.report["verdict"])
    passed = property(lambda self: self.report["verdict"] == "pass")
    numerics = property(lambda self: self.report["numerics"])
    latency_ms = property(lambda self: self.report["latency_ms"])
    violations = property(lambda self: self.report["violations"])
    exit_code = property(lambda self: 3 if self.report["verdict"] == "fail" else 0)


@dataclass(frozen=True)
class TargetInfo:
    name: str
    aliases: tuple[str, ...]
    backend: str
    op_profile: str
    ops: tuple[str, ...]  # the op set (capability pseudo-ops apart)
    capabilities: tuple[str, ...]  # e.g. MatMulRank4
    unknown_ops: tuple[str, ...]  # ops the vendor's public documents neither list nor exclude
    precisions: tuple[str, ...]
    budgets: dict
    description: str


def request_for(
    model,
    targets: Iterable[str],
    *,
    example_inputs=None,
    budgets: dict | None = None,
    out: str | Path = "out",
    **options,
):
    """A BuildRequest from API arguments: `model` a path/timm:NAME or an in-memory model, the rest by name."""
    from vdeploy.pipeline import BuildRequest

    name = options.pop("name", None)
    known = {f.name for f in fields(BuildRequest)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UsageError(
            f"unknown build option(s): {', '.join(unknown)}",
            f"options: {', '.join(sorted(known - {'model', 'targets', 'source'}))}",
        )
    in_memory = not isinstance(model, (str, Path))
    name = name or (type(model).__name__.lower() if in_memory else str(model))
    for key in ("calib", "eval_data", "catalog", "sign_key"):
        if options.get(key) is not None:
            options[key] = Path(options[key])
    if options.get("input_shape") is not None:
        options["input_shape"] = tuple(options["input_shape"])
    if options.get("prune_heads") is not None:  # a count, {block id: heads kept}, a JSON file, or a HeadPruning
        from vdeploy.prune_stage import HeadPruning

        options["prune_heads"] = HeadPruning.of(options["prune_heads"])
    return BuildRequest(
        model=name if in_memory else str(model),
        targets=tuple(targets),
        out_dir=Path(out),
        budgets=tuple(sorted((budgets or {}).items())),
        source=model if in_memory else None,
        example_inputs=tuple(example_inputs) if example_inputs is not None else None,
        **options,
    )


def _targets(target: str | Iterable[str]) -> tuple[str, ...]:
    return (target,) if isinstance(target, str) else tuple(target)


def build(
    model: Any,
    target: str | Iterable[str],
    *,
    example_inputs=None,
    precision: str | None = None,
    budgets: dict | None = None,
    out: str | Path = "out",
    progress: Progress = lambda _: None,
    no_cache: bool = False,
    fit: bool = False,
    fit_budget_s: float = 300.0,
    fit_allow_resize: bool = False,
    fit_levers: Iterable[str] | None = None,
    plan: str | Path | None = None,
    **options,
):
    """Build, validate and bundle `model` for one target (-> pipeline.BuildResult) or several (-> a list). A target that
    cannot be built raises its VdeployError (for several targets: the first, after the others were built).
    An unchanged build comes from the build cache (docs/reliability.md) unless no_cache=True.
    fit=True searches the levers (docs/fit.md); plan= replays a plan.json; both take one target and return a
    BuildResult whose manifest has a "fit" section."""
    from vdeploy.pipeline import BuildResult
    from vdeploy.pipeline import build as run_build

    names = _targets(target)
    request = request_for(
        model, names, example_inputs=example_inputs, budgets=budgets, out=out, precision=precision, **options
    )
    if fit or plan is not None:
        from vdeploy.fit.output import fit_build, plan_build

        if fit and plan is not None:
            raise UsageError("fit=True and plan= do not go together", "fit searches and writes plan.json")
        if fit:
            return fit_build(request, progress, budget_s=fit_budget_s, allow_resize=fit_allow_resize, levers=fit_levers)
        return plan_build(request, Path(plan), progress)
    outcomes = run_build(request, progress, use_cache=not no_cache)
    results: list[BuildResult] = [o.result for o in outcomes if o.result]
    errors = [o.error for o in outcomes if o.error]
    if errors:
        raise errors[0]
    return results[0] if isinstance(target, str) and len(results) == 1 else results


def coverage(
    model: Any, target: str | Iterable[str], *, example_inputs=None, progress: Progress = lambda _: None, **options
) -> dict:
    """{target: Coverage} — the plan up to legalization for each target: no reference run, nothing compiled."""
    from vdeploy.pipeline import coverage_for_targets

    return coverage_for_targets(
        request_for(model, _targets(target), example_inputs=example_inputs, **options), progress
    )


def debug(model: Any, target: str, *, example_inputs=None, progress: Progress = lambda _: None, **options):
    """Bisect numerics over the target's build plan (the artifact `build` makes with the same options)."""
    from vdeploy.bisect import bisect

    request = request_for(model, (target,), example_inputs=example_inputs, **options)
    return bisect(request.model, target, request=request, progress=progress)


def validate(
    bundle: str | Path,
    *,
    iters: int = 50,
    verify_key: str | Path | None = None,
    progress: Progress = lambda _: None,
) -> ValidationResult:
    """Re-run a bundle's reference I/O, latency and budgets on this machine. With `verify_key` (an ed25519 public key
    PEM) the bundle must carry a signature by that key over every file, else SignatureError."""
    from vdeploy.validate.rerun import validate_bundle

    key = Path(verify_key) if verify_key is not None else None
    return ValidationResult(Path(bundle), validate_bundle(Path(bundle), iters=iters, verify_key=key, progress=progress))


def keygen(path: str | Path) -> tuple[Path, Path]:
    """A new ed25519 key pair for signing bundles: `path` (private, PEM, mode 0600) and `path`.pub."""
    from vdeploy.signing import keygen as make

    return make(Path(path))


def targets(catalog: str | Path | None = None) -> list[TargetInfo]:
    """The target catalogue ($VDEPLOY_TARGETS or the shipped targets.yaml, unless `catalog` is given)."""
    from vdeploy.graph_passes.ops import CAPABILITY_DOMAIN
    from vdeploy.targets import load_catalog

    return [
        TargetInfo(
            t.name,
            tuple(t.spec.aliases),
            t.backend,
            t.spec.op_profile,
            tuple(sorted(str(op) for op in t.op_set if op.domain != CAPABILITY_DOMAIN)),
            tuple(sorted(op.op_type for op in t.op_set if op.domain == CAPABILITY_DOMAIN)),
            tuple(sorted(str(op) for op in t.unknown)),
            tuple(p.value for p in t.spec.precisions),
            t.spec.budgets.model_dump(mode="json"),
            t.spec.description,
        )
        for t in load_catalog(catalog)
    ]
