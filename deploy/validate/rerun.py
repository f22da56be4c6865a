"""`vdeploy validate BUNDLE`: re-run a bundle's reference I/O on this machine, using only the bundle.

A plan of stages (deploy/plan.py's Stage and run_plan, with the same instruments as a build):
verify (signature; manifest checked by validate/trust.py: paths inside, all hashed, options allowed; file hashes)
-> prepare (backend; finish a deferred build) -> run (reference_io inputs, child process, timed) -> compare -> judge
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vdeploy.bundle import MANIFEST, read_manifest
from vdeploy.load import sha256_file
from vdeploy.plan import Stage, run_plan
from vdeploy.strict_json import with_reasons
from vdeploy.validate.trust import BundleError, check_structure, checked_artifact, inside


@dataclass
class ValidationState:
    """What the validation stages read and fill (the build's BuildState, for a bundle)."""

    bundle_dir: Path
    iters: int = 50
    warmup: int = 10
    verify_key: Path | None = None
    progress: Callable[[str], None] = lambda _: None
    instruments: tuple = ()
    timings: dict[str, float] = field(default_factory=dict)
    signature: Any = None  # signing.SignatureStatus
    manifest: dict = field(default_factory=dict)
    backend: Any = None
    artifact: Any = None
    feeds: dict = field(default_factory=dict)
    expected: dict = field(default_factory=dict)
    latency_reason: str | None = None
    run: Any = None  # RunResult
    numerics: Any = None
    figures: Any = None
    judgement: Any = None


def validation_plan() -> list[Stage[ValidationState]]:
    """verify -> prepare -> run -> compare -> judge: the tail of a build plan, over a bundle instead of a model.
    The stages print no progress lines: validate's stderr is its one-line result or error."""
    return [
        Stage("verify", verify),
        Stage("prepare", prepare),
        Stage(
            "run", run, lambda st: f"running the artifact on this host ({0 if st.latency_reason else st.iters} timed)"
        ),
        Stage("compare", compare_outputs),
        Stage("judge", judge),
    ]


def _timed(state: ValidationState) -> int:
    return 0 if state.latency_reason else state.iters


def validate_bundle(
    bundle_dir: Path, *, iters: int = 50, warmup: int = 10, verify_key: Path | None = None, progress=lambda _: None
) -> dict:
    state = run_plan(validation_plan(), ValidationState(Path(bundle_dir), iters, warmup, verify_key, progress))
    return report(state)


def verify(state: ValidationState) -> None:
    """Signature first (before anything is read from the manifest), then structure, paths and every file hash."""
    from vdeploy.signing import verify_bundle

    bundle_dir = state.bundle_dir
    if not (bundle_dir / MANIFEST).is_file():
        raise BundleError(f"{bundle_dir} is not a vdeploy bundle (no {MANIFEST})", "pass the directory `build` wrote")
    state.signature = verify_bundle(bundle_dir, state.verify_key)
    state.manifest = _read(bundle_dir)
    state.artifact = checked_artifact(bundle_dir, state.manifest)
    _verify_files(bundle_dir, state.manifest)


def prepare(state: ValidationState) -> None:
    from vdeploy.backends import get_backend

    state.backend = get_backend(state.artifact.backend)
    state.artifact = state.backend.prepare(state.artifact, state.bundle_dir)  # finish a deferred build (TensorRT)
    with np.load(state.bundle_dir / "reference_io.npz") as data:
        state.feeds = {k.split(":", 1)[1]: data[k] for k in data.files if k.startswith("input:")}
        state.expected = {k.split(":", 1)[1]: data[k] for k in data.files if k.startswith("output:")}
    state.latency_reason = state.backend.host_latency_reason(state.artifact)


def run(state: ValidationState) -> None:
    from vdeploy.validate.isolate import run_artifact

    state.run = run_artifact(state.artifact, state.bundle_dir, state.feeds, warmup=state.warmup, iters=_timed(state))


def compare_outputs(state: ValidationState) -> None:
    from vdeploy.validate.compare import compare

    state.numerics = compare(state.expected, dict(zip(state.expected, state.run.outputs)))


def judge(state: ValidationState) -> None:
    """The bundle's own budgets and gates, judged by the build's judging functions; estimates never count here."""
    from pydantic import ValidationError

    from vdeploy.errors import first_line
    from vdeploy.judging import figures_of_run, judge_figures
    from vdeploy.targets import Budgets, Tolerance

    manifest, missing = state.manifest, dict[str, str]()
    top1_drop = _build_top1_drop(manifest, state.artifact, missing)
    figures = figures_of_run(
        state.run,
        size_mb=manifest["size_mb"],
        host_reason=state.latency_reason,
        top1_drop_pt=top1_drop,
        accuracy_reason=missing.get("accuracy"),
    )
    if figures.power is None and not state.run.power_reason:
        figures.missing["power_w"] = "no power meter on this host"
    budgets = manifest["budgets"]
    try:
        gates = Budgets(**{k: v for k, v in budgets.items() if k != "numerics"}), Tolerance(**budgets["numerics"])
    except (ValidationError, TypeError) as exc:
        problem = first_line(exc)
        if isinstance(exc, ValidationError):
            problem = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
        raise BundleError(f"the manifest's budgets are not valid ({problem})", "rebuild the bundle") from None
    state.figures = figures
    state.judgement = judge_figures(
        *gates, state.numerics, figures, allow_estimates=False, deferred=state.artifact.deferred
    )


def report(state: ValidationState) -> dict:
    run, judgement, missing = state.run, state.judgement, state.figures.missing
    return with_reasons(
        {  # strict JSON, as the manifest
            "bundle": str(state.bundle_dir),
            "target": state.manifest["target"],
            "backend": state.artifact.backend,
            "artifact": state.artifact.to_dict(),
            "host": {"machine": platform.machine(), "node": platform.node(), "processor": platform.processor()},
            "numerics": state.numerics.to_manifest(),
            "latency_ms": run.latency.to_manifest() if run.latency else None,
            "power_w": state.figures.power,
            "peak_mem_mb": run.peak_rss_mb,
            "budgets": state.manifest["budgets"],
            "violations": [v.to_manifest() for v in judgement.violations],
            "verdict": judgement.verdict.value,
            "reason": {**missing, **({"unverified": list(judgement.unverified)} if judgement.unverified else {})},
            "signature": state.signature.to_report(),
        }
    )


def _build_top1_drop(manifest: dict, artifact, missing: dict) -> float | None:
    """The labelled top-1 drop measured at build time. It holds here when this is the artifact that was measured
    (its hashes were just verified); a build finished on this host (a TensorRT engine) was not measured."""
    accuracy = manifest.get("accuracy")
    if accuracy is None:
        missing["accuracy"] = "the bundle was built without --eval-data"
        return None
    if manifest["artifact"].get("deferred"):
        missing["accuracy"] = (
            "top-1 was measured at build time on the ONNX stand-in, not on the artifact built "
            "here: rebuild with --eval-data on this device"
        )
        return None
    return accuracy["top1_drop_pt"]


def _read(bundle_dir: Path) -> dict:
    try:
        return check_structure(read_manifest(bundle_dir), bundle_dir / MANIFEST)
    except ValueError as exc:  # JSON, or UTF-8
        raise BundleError(f"{bundle_dir / MANIFEST} is not valid JSON ({exc})", "rebuild the bundle") from None


def _verify_files(bundle_dir: Path, manifest: dict) -> None:
    for entry in manifest["files"]:
        path = inside(bundle_dir, entry["path"], "file")
        if not path.is_file():
            raise BundleError(f"bundle file {entry['path']} is missing", "copy the whole bundle directory")
        if sha256_file(path) != entry["sha256"]:
            raise BundleError(
                f"bundle file {entry['path']} does not match its sha256 in the manifest",
                "the bundle was modified or damaged in transit; copy it again",
            )
