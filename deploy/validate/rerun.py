"""`vdeploy validate BUNDLE`: re-run a bundle's reference I/O on this machine, using only the bundle.

bundle dir -> manifest checked (validate/trust.py: paths inside, all hashed, options allowed) -> verify file
hashes -> run artifact on reference_io inputs (child process) -> compare, time -> judge
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from vdeploy.bundle import MANIFEST, read_manifest
from vdeploy.load import sha256_file
from vdeploy.strict_json import with_reasons
from vdeploy.validate.trust import BundleError, check_structure, checked_artifact, inside


def validate_bundle(bundle_dir: Path, *, iters: int = 50, warmup: int = 10, verify_key: Path | None = None) -> dict:
    from pydantic import ValidationError

    from vdeploy.backends import get_backend
    from vdeploy.errors import first_line
    from vdeploy.judging import figures_of_run, judge_figures
    from vdeploy.signing import verify_bundle
    from vdeploy.targets import Budgets, Tolerance
    from vdeploy.validate.compare import compare
    from vdeploy.validate.isolate import run_artifact

    bundle_dir = Path(bundle_dir)
    if not (bundle_dir / MANIFEST).is_file():
        raise BundleError(f"{bundle_dir} is not a vdeploy bundle (no {MANIFEST})", "pass the directory `build` wrote")
    signature = verify_bundle(bundle_dir, verify_key)  # before anything is read from the manifest
    manifest = _read(bundle_dir)
    artifact = checked_artifact(bundle_dir, manifest)
    _verify_files(bundle_dir, manifest)
    backend = get_backend(artifact.backend)
    artifact = backend.prepare(artifact, bundle_dir)  # finish a deferred build where this host can (TensorRT)
    with np.load(bundle_dir / "reference_io.npz") as data:
        feeds = {k.split(":", 1)[1]: data[k] for k in data.files if k.startswith("input:")}
        expected = {k.split(":", 1)[1]: data[k] for k in data.files if k.startswith("output:")}
    latency_reason = backend.host_latency_reason(artifact)
    run = run_artifact(artifact, bundle_dir, feeds, warmup=warmup, iters=0 if latency_reason else iters)
    numerics = compare(expected, dict(zip(expected, run.outputs)))
    budgets = manifest["budgets"]
    missing: dict = {}
    top1_drop = _build_top1_drop(manifest, artifact, missing)
    figures = figures_of_run(
        run,
        size_mb=manifest["size_mb"],
        host_reason=latency_reason,
        top1_drop_pt=top1_drop,
        accuracy_reason=missing.get("accuracy"),
    )
    if figures.power is None and not run.power_reason:
        figures.missing["power_w"] = "no power meter on this host"
    power = figures.power
    try:
        gates = Budgets(**{k: v for k, v in budgets.items() if k != "numerics"}), Tolerance(**budgets["numerics"])
    except (ValidationError, TypeError) as exc:
        problem = first_line(exc)
        if isinstance(exc, ValidationError):
            problem = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
        raise BundleError(f"the manifest's budgets are not valid ({problem})", "rebuild the bundle") from None
    judgement = judge_figures(
        *gates,
        numerics,
        figures,
        allow_estimates=False,
        deferred=artifact.deferred,
    )
    missing = figures.missing
    return with_reasons(
        {  # strict JSON, as the manifest
            "bundle": str(bundle_dir),
            "target": manifest["target"],
            "backend": artifact.backend,
            "artifact": artifact.to_dict(),
            "host": {"machine": platform.machine(), "node": platform.node(), "processor": platform.processor()},
            "numerics": numerics.to_manifest(),
            "latency_ms": run.latency.to_manifest() if run.latency else None,
            "power_w": power,
            "peak_mem_mb": run.peak_rss_mb,
            "budgets": budgets,
            "violations": [v.to_manifest() for v in judgement.violations],
            "verdict": judgement.verdict.value,
            "reason": {**missing, **({"unverified": list(judgement.unverified)} if judgement.unverified else {})},
            "signature": signature.to_report(),
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
