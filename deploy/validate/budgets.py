"""Judge measurements against budgets: violations and the verdict a release gate reads.

(Budgets, Tolerance, measurements) -> Judgement(budgets applied, violations, unverified, verdict)
A budget that is set but could not be measured makes the verdict "unverified", never "pass".
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from vdeploy.targets import Budgets, Tolerance
from vdeploy.validate.compare import NumericsReport
from vdeploy.validate.measure import Latency


class Verdict(str, enum.Enum):
    passed = "pass"
    failed = "fail"
    unverified = "unverified"


@dataclass(frozen=True)
class Violation:
    budget: str
    limit: float
    measured: float
    unit: str

    def to_manifest(self) -> dict:
        finite = math.isfinite(self.measured)  # the manifest is strict JSON: no NaN/Infinity literals
        return {
            "budget": self.budget,
            "limit": self.limit,
            "measured": self.measured if finite else None,
            "unit": self.unit,
            "message": str(self),
        }

    def __str__(self) -> str:
        op = ">=" if self.budget.startswith("min_") else "<="
        if not math.isfinite(self.measured):
            return (
                f"{self.budget}: measured {self.measured} (not a finite number: the outputs or the reference "
                f"hold NaN/inf), budget {op} {self.limit:g} {self.unit}"
            ).rstrip()
        return f"{self.budget}: measured {self.measured:.6g} {self.unit}, budget {op} {self.limit:g} {self.unit}"


@dataclass(frozen=True)
class Judgement:
    budgets: dict
    violations: tuple[Violation, ...]
    unverified: tuple[str, ...]  # budgets set but not measured, with the reason

    @property
    def verdict(self) -> Verdict:
        if self.violations:
            return Verdict.failed
        return Verdict.unverified if self.unverified else Verdict.passed


# Budget kinds measured by a stage other than the timed run (a toolchain's report), by name: unit.
EXTRA_BUDGETS = {"sram_kb": "KiB", "flash_kb": "KiB"}


def judge(
    budgets: Budgets,
    tolerance: Tolerance,
    *,
    numerics: NumericsReport | None,
    latency: Latency | None,
    size_mb: float,
    power_w: float | None,
    missing: dict[str, str],
    estimated: frozenset = frozenset(),
    allow_estimates: bool = False,
    energy_mj: float | None = None,
    peak_mem_mb: float | None = None,
    deferred: str = "",
    top1_drop_pt: float | None = None,
    extra: dict | None = None,
) -> Judgement:
    """`missing` maps a measurement name (latency_ms, power_w, numerics) to why it is absent; `estimated` names the
    measurements that are estimates (the analytic model, a toolchain's cycle count): judged only where the
    target allows estimates.
    `deferred` says why the final artifact was not built here; such a build is never better than unverified.
    `extra`: measurements of the budget kinds in EXTRA_BUDGETS, by budget name."""
    extra = extra or {}
    stat = budgets.latency_stat.value
    top1 = numerics.top1_agreement if numerics else None
    checks = [  # (budget, limit, measured, unit, measurement it comes from)
        ("latency_ms", budgets.latency_ms, getattr(latency, stat) if latency else None, "ms", "latency_ms"),
        ("power_w", budgets.power_w, power_w, "W", "power_w"),
        ("energy_mj", budgets.energy_mj, energy_mj, "mJ", "power_w"),
        ("size_mb", budgets.size_mb, size_mb, "MB", "size_mb"),
        ("peak_mem_mb", budgets.peak_mem_mb, peak_mem_mb, "MB", "peak_mem_mb"),
        ("max_rel_err", tolerance.max_rel_err, numerics.rel_err if numerics else None, "", "numerics"),
        ("min_cosine", tolerance.min_cosine, numerics.cosine if numerics else None, "", "numerics"),
        # int8 hook: the same minimum holds for the worst validation sample, not only pooled (issue 14)
        (
            "min_cosine_worst_sample",
            tolerance.min_cosine,
            numerics.worst_sample_cosine if numerics else None,
            "",
            "numerics",
        ),
    ]
    checks += [(name, getattr(budgets, name), extra.get(name), unit, name) for name, unit in EXTRA_BUDGETS.items()]
    if top1 is not None or numerics is None:  # top-1 only exists for class-score outputs
        checks.append(("min_top1_agreement", tolerance.min_top1_agreement, top1, "", "numerics"))
    checks.append(("max_top1_drop", tolerance.max_top1_drop, top1_drop_pt, "pt", "accuracy"))
    violations, unverified = [], [f"artifact: {deferred}"] if deferred else []
    for name, limit, measured, unit, source in checks:
        if limit is None:
            continue
        if measured is None:
            unverified.append(f"{name}: {missing.get(source, 'not measured')}")
        elif not math.isfinite(measured):  # NaN compares false with every limit: fail closed
            violations.append(Violation(name, limit, measured, unit))
        elif source in estimated and not allow_estimates:
            unverified.append(
                f"{name}: only estimated ({measured:.4g} {unit}, an estimate, not a measurement; budget "
                f"{limit:g} {unit}); measure on the device with `vdeploy validate`"
            )
        elif (measured < limit) if name.startswith("min_") else (measured > limit):
            violations.append(Violation(name, limit, measured, unit))
    applied = {
        "latency_ms": budgets.latency_ms,
        "latency_stat": stat,
        "power_w": budgets.power_w,
        "energy_mj": budgets.energy_mj,
        "size_mb": budgets.size_mb,
        "peak_mem_mb": budgets.peak_mem_mb,
        **{name: getattr(budgets, name) for name in EXTRA_BUDGETS},
        "numerics": tolerance.model_dump(),
    }
    return Judgement(applied, tuple(violations), tuple(unverified))
