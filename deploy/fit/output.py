"""--fit and --plan builds: run the search (or replay a plan), then write the chosen plan's bundle.

request -> search (or read_plan + one plan run) -> the chosen trial's scratch dir copied into a BundleWriter ->
reference_io.npz, plan.json, manifest.json (the usual serialization + a "fit" section: every trial, the frontier,
the misses) and report.html (with the scatter) -> BuildResult (exit 0 fits / 3 nearest plan written).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from vdeploy.fit.planfile import plan_document, read_plan
from vdeploy.fit.search import FitResult, search
from vdeploy.fit.trial import Trial

DEFAULT_BUDGET_S = 300.0


def _single_target(request):
    from vdeploy.errors import UsageError
    from vdeploy.pipeline import resolve_targets

    targets = resolve_targets(request.targets, request.catalog)
    if len(targets) != 1:
        raise UsageError("--fit and --plan take one target", "run one build per target")
    return targets[0]


def fit_build(request, progress, *, budget_s: float = DEFAULT_BUDGET_S, allow_resize: bool = False, levers=None):
    """Search the levers (`levers`: names to search, None: all) for `request`'s target; write the chosen (or
    nearest) plan's bundle -> BuildResult."""
    from vdeploy.bundle import check_out_dir

    target = _single_target(request)
    check_out_dir(request.out_dir)
    with tempfile.TemporaryDirectory(prefix="vdeploy-fit-") as tmp:
        result = search(
            request, target, progress, budget_s=budget_s, allow_resize=allow_resize, root=Path(tmp), only=levers
        )
        chosen = result.chosen
        if chosen.retimed is not None:  # the bundle's latency is the side-by-side measurement the choice used
            _rejudge(chosen, chosen.retimed)
        section = fit_section(result)
        plan = plan_document(
            chosen.choices,
            target,
            chosen.state.shared.loaded,
            made_by="vdeploy build --fit",
            fits=result.fits,
            pruning=chosen.state.pruning,
        )
        return write_bundle(chosen.state, plan, section)


def plan_build(request, plan_path: Path, progress):
    """Replay a plan file: the same choices, one plan run, the same artifact bytes -> BuildResult."""
    from vdeploy.bundle import check_out_dir
    from vdeploy.pipeline import new_state
    from vdeploy.plan import Shared, plan, run_plan

    target = _single_target(request)
    choices = read_plan(plan_path, target)
    check_out_dir(request.out_dir)
    shape = None
    if choices.input_size:
        from vdeploy.sources import load_request

        shape = _input_shape(load_request(request, progress), choices.input_size)
    state = new_state(choices.request(request, shape), target, Shared(), progress)
    with tempfile.TemporaryDirectory(prefix="vdeploy-plan-") as tmp:
        state.work_dir = Path(tmp)
        run_plan(plan(state.target, state.request), state)
        doc = plan_document(
            choices,
            target,
            state.shared.loaded,
            made_by=f"vdeploy build --plan {plan_path}",
            fits=None,
            pruning=state.pruning,
        )
        return write_bundle(state, doc, {"replayed": str(plan_path), "plan": doc["choices"]})


def _input_shape(loaded, hw) -> tuple[int, ...]:
    (spec,) = loaded.inputs
    return (*spec.shape[:-2], *hw)


def _rejudge(trial: Trial, latency) -> None:
    from vdeploy.stages import judge_state

    state = trial.state
    state.run = dataclasses.replace(state.run, latency=latency)
    judge_state(state)


def write_bundle(state, plan_doc: dict, section: dict):
    from vdeploy.bundle import BundleWriter
    from vdeploy.manifest import serialize
    from vdeploy.pipeline import BuildResult
    from vdeploy.report_html import render_html

    request, target = state.request, state.target
    with BundleWriter(request.out_dir, f"{state.shared.loaded.stem}-{target.name}") as writer:
        for item in Path(state.work_dir).iterdir():
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, writer.tmp / item.name)
        state.work_dir = writer.tmp
        np.savez(
            writer.tmp / "reference_io.npz",
            **{f"input:{k}": v for k, v in state.feeds.items()},
            **{f"output:{k}": v for k, v in state.expected.items()},
        )
        (writer.tmp / "plan.json").write_text(json.dumps(plan_doc, indent=2) + "\n")
        manifest = serialize(state, writer.file_entries())
        manifest["fit"] = section
        (writer.tmp / "report.html").write_text(render_html(manifest))
        bundle = writer.finish(manifest)
    return BuildResult(target.name, manifest, bundle, dict(state.timings))


# ---- the manifest's "fit" section --------------------------------------------------------------------------


def trial_row(trial: Trial, *, frontier: bool, chosen: bool) -> dict:
    status = "error" if not trial.ok else "chosen" if chosen else "fits" if trial.fits else "misses"
    return {
        "plan": trial.choices.label(),
        "choices": trial.choices.to_dict(),
        "status": status,
        "fits": trial.fits,
        "frontier": frontier,
        "latency_ms": trial.latency_ms,
        "latency_source": trial.latency_source or None,
        "side_by_side_ms": trial.side_by_side_ms,
        "ratio_to_baseline": trial.ratio_to_base,
        "power_w": trial.power_w,
        "power_source": trial.power_source or None,
        "energy_mj": trial.energy_mj,
        "size_mb": trial.size_mb,
        "worst_cosine": trial.worst_cosine,
        "cosine": trial.cosine,
        "top1_agreement": trial.top1_agreement,
        "top1_drop_pt": trial.top1_drop_pt,
        "gate_violations": trial.gate_violations,
        "misses": trial.misses,
        "unmeasured": trial.unmeasured,
        "seconds": trial.seconds,
        "error": trial.error,
    }


def fit_section(result: FitResult) -> dict:
    budgets = result.baseline.state.request.budgets_for(result.baseline.state.target)
    front = {id(t) for t in result.frontier}
    return {
        "fits": result.fits,
        "chosen": result.chosen.choices.label(),
        "plan": result.chosen.choices.to_dict(),
        "budgets": {k: v for k, v in budgets.model_dump(mode="json").items() if v is not None},
        "misses": {} if result.fits else {**result.chosen.misses, **_gate_misses(result.chosen)},
        "unmeasured": result.chosen.unmeasured,
        "trials": [trial_row(t, frontier=id(t) in front, chosen=t is result.chosen) for t in result.trials],
        "predicted": [
            {
                "plan": p.choices.label(),
                "latency_ms": round(p.latency_ms, 4) if p.latency_ms is not None else None,
                "loss": p.loss,
                "fits": p.fits,
            }
            for p in result.predicted[:12]
        ],
        "levers": [
            {"name": lever.name, "values": [_jsonable(v) for v in lever.values], "resume": lever.resume}
            for lever in result.levers
        ],
        "elapsed_s": result.elapsed_s,
        "budget_s": result.budget_s,
        "notes": result.notes,
        "method": "screen each lever alone, predict combinations from the single-lever ratios, measure the "
        "predicted fits (least loss first), re-time the frontier side by side",
    }


def _gate_misses(trial: Trial) -> dict:
    return {f"gate {i + 1}": {"message": v} for i, v in enumerate(trial.gate_violations)}


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value
