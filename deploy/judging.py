"""Judging a run: the measured (or labelled-estimate) figures of an artifact, set against the budgets and gates.

RunResult + estimates -> Figures (latency, power, size, memory, accuracy; each with its source or why it is missing)
-> judge(budgets, tolerance, figures) -> Judgement. Build and `vdeploy validate` both judge through here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vdeploy.targets import Budgets, Tolerance
from vdeploy.validate.budgets import Judgement, judge
from vdeploy.validate.measure import Latency


@dataclass
class Figures:
    """What a run measured, and why anything is missing. Estimates are named in `estimated`."""

    latency: Latency | None = None
    latency_source: str = "measured"  # "measured", "estimate" (roofline) or a toolchain's label ("rknn-estimate")
    power: dict | None = None  # {"mean", "source", "energy_mj", ...}
    size_mb: float = 0.0
    peak_mem_mb: float | None = None
    top1_drop_pt: float | None = None
    extra: dict = field(default_factory=dict)  # further budget measurements by name (e.g. sram_kb from a toolchain)
    missing: dict = field(default_factory=dict)  # measurement -> why it is absent
    estimated: set = field(default_factory=set)  # measurements that come from a model, not from running

    def latency_manifest(self) -> dict | None:
        if self.latency is None:
            return None
        if self.latency_source == "measured":
            return self.latency.to_manifest()
        value = self.latency.p50
        return {"p50": value, "p90": value, "p99": value, "runs": 0, "source": self.latency_source}


def power_figure(run) -> dict | None:
    """The metered power of the timed runs, with energy per inference; None without a meter."""
    if not run.energy or not run.latency:
        return None
    return {**run.energy, "energy_mj": round(run.energy["joules"] / run.latency.runs * 1000.0, 4)}


def figures_of_run(
    run,
    *,
    size_mb: float,
    host_reason: str | None,
    estimate: dict | None = None,
    top1_drop_pt: float | None = None,
    accuracy_reason: str | None = None,
) -> Figures:
    """Figures from a run of the artifact; an estimate ({"latency_ms", "source", "mean"?, "energy_mj"?}) stands in
    for latency or power only where nothing was measured, and is labelled with its source."""
    figures = Figures(
        latency=run.latency,
        power=power_figure(run),
        size_mb=size_mb,
        peak_mem_mb=run.peak_rss_mb,
        top1_drop_pt=top1_drop_pt,
    )
    if estimate is not None and figures.latency is None and estimate.get("latency_ms") is not None:
        figures.latency = Latency.from_samples([estimate["latency_ms"]])
        figures.latency_source = estimate.get("source", "estimate")
        figures.estimated.add("latency_ms")
    if estimate is not None and figures.power is None and estimate.get("mean") is not None:
        figures.power = {
            "mean": estimate["mean"],
            "source": estimate.get("source", "estimate"),
            "energy_mj": estimate.get("energy_mj"),
        }
        figures.estimated.add("power_w")
    for name in ("sram_kb", "flash_kb"):
        if estimate is not None and estimate.get(name) is not None:
            figures.extra[name] = estimate[name]
            figures.estimated.add(name)
    if figures.latency is None or ("latency_ms" in figures.estimated and host_reason):
        figures.missing["latency_ms"] = host_reason or "not measured"
    if figures.power is None:
        figures.missing["power_w"] = run.power_reason or "no power meter and no hardware figures for an estimate"
    if top1_drop_pt is None:
        figures.missing["accuracy"] = accuracy_reason or "no labelled data: pass --eval-data FILE.npz"
    return figures


def judge_figures(
    budgets: Budgets, tolerance: Tolerance, numerics, figures: Figures, *, allow_estimates: bool, deferred: str = ""
) -> Judgement:
    power = figures.power or {}
    return judge(
        budgets,
        tolerance,
        numerics=numerics,
        latency=figures.latency,
        size_mb=figures.size_mb,
        power_w=power.get("mean"),
        missing=figures.missing,
        estimated=frozenset(figures.estimated),
        allow_estimates=allow_estimates,
        energy_mj=power.get("energy_mj"),
        peak_mem_mb=figures.peak_mem_mb,
        deferred=deferred,
        top1_drop_pt=figures.top1_drop_pt,
        extra=figures.extra,
    )
