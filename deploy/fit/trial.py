"""One trial of the search: a plan (Choices) run from the baseline's state, measured and judged.

baseline BuildState + Choices -> resume_from(the earliest stage the changed levers name) in a scratch dir ->
run_plan(the tail) -> Trial: latency/power/size with their sources (measured here, or the toolchain's / roofline's
labelled estimate), accuracy (worst-sample cosine vs the PyTorch reference at the user's input, top-1 drop on
--eval-data), the judge's gate violations and, per budget, how far the figure is over it.
A trial that fails keeps its one-line error; the search goes on.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vdeploy.errors import VdeployError
from vdeploy.fit.levers import Choices
from vdeploy.plan import BuildState, Shared, plan, resume_from, run_plan, stages_from

STAGE_ORDER = ("load", "reference", "export", "prune", "legalize", "check", "runtime", "precision", "compile", "run")
GATES = ("max_rel_err", "min_cosine", "min_cosine_worst_sample", "min_top1_agreement", "max_top1_drop")
BUDGET_KINDS = ("latency_ms", "power_w", "energy_mj", "size_mb", "peak_mem_mb", "sram_kb", "flash_kb")
LOSS_QUANTUM = 1e-6  # cosine losses closer than this are ties (float rounding, not accuracy)


@dataclass
class Trial:
    choices: Choices
    state: BuildState | None = None
    error: str | None = None
    seconds: float = 0.0
    latency_ms: float | None = None
    latency_source: str = ""
    power_w: float | None = None
    power_source: str = ""
    energy_mj: float | None = None
    size_mb: float | None = None
    worst_cosine: float | None = None
    cosine: float | None = None
    top1_agreement: float | None = None
    top1_drop_pt: float | None = None
    gate_violations: list[str] = field(default_factory=list)
    misses: dict[str, dict] = field(default_factory=dict)  # budget -> {value, limit, over_pct, source}
    unmeasured: dict[str, str] = field(default_factory=dict)  # budget -> why there is no figure for it
    side_by_side_ms: float | None = None  # p50 when re-timed beside the frontier (replaces latency_ms)
    retimed: Any = None  # that side-by-side Latency
    ratio_to_base: float | None = None  # p50 / the baseline's p50 in the same side-by-side batch

    @property
    def ok(self) -> bool:
        return self.error is None and self.state is not None

    @property
    def fits(self) -> bool:
        return self.ok and not self.misses and not self.gate_violations and not self.unmeasured

    @property
    def loss(self) -> tuple[float, float]:
        """(top-1 drop in points or 0, 1 - worst-sample cosine quantized): the accuracy cost, smaller is better."""
        if self.worst_cosine is None:
            return (float("inf"), float("inf"))
        cos_loss = round(max(0.0, 1.0 - self.worst_cosine) / LOSS_QUANTUM) * LOSS_QUANTUM
        return (max(0.0, self.top1_drop_pt or 0.0), cos_loss)

    def distance(self) -> float:
        """How far the trial is from fitting: the summed relative overshoot of every budget and gate it misses."""
        if not self.ok:
            return float("inf")
        over = sum(m["over_pct"] for m in self.misses.values()) / 100.0
        return over + len(self.gate_violations) + 10.0 * len(self.unmeasured)


def resume_stage(base: Choices, new: Choices, levers) -> str:
    """The earliest plan stage any changed lever re-runs from."""
    changed = [lever.resume for lever in levers if lever.get(base) != lever.get(new)]
    return min(changed, key=STAGE_ORDER.index) if changed else "precision"


def run_trial(
    base_state: BuildState, catalog_target, base: Choices, choices: Choices, levers, work_dir: Path, progress
) -> Trial:
    """Run the plan `choices` makes from the baseline's state (`catalog_target`: the target as the catalogue
    has it, before any runtime change); measure and judge it."""
    from vdeploy.runtimes import with_runtime

    started = time.perf_counter()
    trial = Trial(choices)
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        stage = resume_stage(base, choices, levers)
        request = base_state.request
        shape = _resized_shape(base_state, choices.input_size) if choices.input_size else None
        new_request = choices.request(request, shape)
        if choices.input_size:
            new_request = dataclasses.replace(new_request, eval_data=None)  # labelled data has the original size
        target = with_runtime(catalog_target, choices.runtime, request.catalog)
        changes: dict[str, Any] = {
            "request": new_request,
            "target": target,
            "precision": choices.precision or target.spec.default_precision.value,
            "work_dir": work_dir,
            "runtime_pick": None,
        }
        if choices.input_size:
            changes["shared"] = _resized_shared(base_state.shared, choices.input_size, request, progress)
        state = resume_from(base_state, stage, changes=changes)
        state.progress = progress
        run_plan(stages_from(plan(target, new_request), stage), state, instruments=())
        trial.state = state
        fill_figures(trial, base_state)
    except VdeployError as exc:
        trial.error = exc.one_line()
    trial.seconds = round(time.perf_counter() - started, 1)
    return trial


def _resized_shape(state, hw) -> tuple[int, ...]:
    (spec,) = state.shared.loaded_inputs
    return (*spec.shape[:-2], *hw)


def _resized_shared(shared: Shared, hw, request, progress) -> Shared:
    """The baseline's validation images, resized (bilinear) to `hw`: the same pictures at another size. A model
    exported for one shape is exported again from its module (in-memory nn.Module) or refused."""
    import torch
    import torch.nn.functional as F

    from vdeploy.errors import UsageError
    from vdeploy.load import ModelFormat

    if len(shared.samples) != 1:
        raise UsageError("the input-size lever needs a single-input image model", "drop --fit-allow-resize")
    ((name, samples),) = shared.samples.items()
    (spec,) = shared.loaded_inputs
    flat = torch.from_numpy(samples.reshape(-1, *samples.shape[-3:]))
    resized = F.interpolate(flat, size=tuple(hw), mode="bilinear", align_corners=False).numpy()
    resized = resized.reshape(*samples.shape[:-2], *hw)
    loaded = shared.loaded
    if loaded.format is ModelFormat.exported_program:
        if request.source is None or not isinstance(request.source, torch.nn.Module):
            raise UsageError(
                "a torch.export program is fixed to its input shape: the input-size lever cannot change it",
                "fit from the model's code (timm:NAME, an nn.Module, TorchScript) to let the input shrink",
            )
        from vdeploy.sources import load_request

        example = (torch.from_numpy(resized[0]),)
        loaded = load_request(dataclasses.replace(request, example_inputs=example), progress)
    return Shared(
        loaded=loaded,
        samples={name: resized},
        samples_source=f"{shared.samples_source}, resized to {hw[0]}x{hw[1]}",
        loaded_inputs=(dataclasses.replace(spec, shape=(*spec.shape[:-2], *hw)),),
        input_specs=shared.input_specs,
    )


def fill_figures(trial: Trial, base_state: BuildState) -> None:
    """Figures, accuracy proxy, gate violations and budget misses of a trial's judged state."""
    state = trial.state
    figures = state.figures
    stat = state.request.budgets_for(state.target).latency_stat.value
    if figures.latency is not None:
        trial.latency_ms = getattr(figures.latency, stat)
        trial.latency_source = figures.latency_source
    if figures.power:
        trial.power_w = figures.power.get("mean")
        trial.power_source = figures.power.get("source", "")
        trial.energy_mj = figures.power.get("energy_mj")
    trial.size_mb = round(figures.size_mb, 4)
    numerics = state.numerics
    if trial.choices.input_size:  # judged against the reference at the user's input size, on the same images
        from vdeploy.validate.compare import compare

        expected = base_state.expected
        try:
            numerics = compare(expected, dict(zip(expected, state.run.outputs)))
        except ValueError as exc:
            trial.error = f"the outputs change shape with the input size ({exc})"
            return
    trial.cosine, trial.worst_cosine = numerics.cosine, numerics.worst_sample_cosine
    trial.top1_agreement = numerics.top1_agreement
    trial.top1_drop_pt = state.accuracy.drop_pt if state.accuracy else None
    trial.gate_violations = [str(v) for v in state.judgement.violations if v.budget in GATES]
    judge_budgets(trial, state)


def judge_budgets(trial: Trial, state: BuildState) -> None:
    """Per budget: over by how much (figure and its source), or why it has no figure. Estimates count here,
    labelled: the search ranks device plans by them; the bundle's verdict still treats them as estimates."""
    budgets = state.request.budgets_for(state.target)
    figures = state.figures
    latency = trial.side_by_side_ms if trial.side_by_side_ms is not None else trial.latency_ms
    values = {
        "latency_ms": (latency, "measured side by side" if trial.side_by_side_ms is not None else trial.latency_source),
        "power_w": (trial.power_w, trial.power_source),
        "energy_mj": (trial.energy_mj, trial.power_source),
        "size_mb": (trial.size_mb, "measured"),
        "peak_mem_mb": (figures.peak_mem_mb, "measured"),
        "sram_kb": (figures.extra.get("sram_kb"), "toolchain estimate"),
        "flash_kb": (figures.extra.get("flash_kb"), "toolchain estimate"),
    }
    trial.misses, trial.unmeasured = {}, {}
    for name in BUDGET_KINDS:
        limit = getattr(budgets, name)
        value, source = values[name]
        if limit is None:
            continue
        if value is None:
            key = "power_w" if name == "energy_mj" else name
            trial.unmeasured[name] = figures.missing.get(key, "not measured")
        elif value > limit:
            trial.misses[name] = {
                "value": round(value, 4),
                "limit": limit,
                "over_pct": round(100.0 * (value / limit - 1.0), 1),
                "source": source,
            }
