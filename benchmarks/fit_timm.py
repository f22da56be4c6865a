"""`vdeploy build --fit` on timm models (random init) for x86-cpu, with a latency budget below the default build.

per model: the default x86-cpu build (FP32, runtime picked by measurement) -> its p50 -> budget = FACTOR x p50 ->
vdeploy.build(fit=True, max_latency_ms=budget) -> the chosen plan (or the nearest and its misses), the trials and
the frontier, as JSON (docs/fit.md quotes it). Timings are this host's, loaded by other work: compare within a run.

Run: .venv/bin/python benchmarks/fit_timm.py [--models deit_tiny_patch16_224] [--factor 0.8] [--fit-budget-s 600]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("deit_tiny_patch16_224", "mobilevit_xs", "swin_tiny_patch4_window7_224", "resnet18")


def run(name: str, factor: float, budget_s: float, out: Path) -> dict:
    import vdeploy

    default = vdeploy.build(f"timm:{name}", "x86-cpu", out=out / "default", iters=30)
    p50 = default.latency_ms["p50"]
    budget = round(factor * p50, 2)
    started = time.perf_counter()
    fitted = vdeploy.build(
        f"timm:{name}",
        "x86-cpu",
        out=out / "fit",
        iters=30,
        fit=True,
        fit_budget_s=budget_s,
        max_latency_ms=budget,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    section = fitted.manifest["fit"]
    return {
        "model": name,
        "default_build": {"backend": default.backend, "p50_ms": p50, "runtime_pick": default.manifest["runtime_pick"]},
        "latency_budget_ms": budget,
        "fits": section["fits"],
        "chosen": section["chosen"],
        "chosen_p50_ms": fitted.latency_ms["p50"] if fitted.latency_ms else None,
        "misses": section["misses"],
        "trials": [
            {
                k: t[k]
                for k in (
                    "plan",
                    "status",
                    "frontier",
                    "latency_ms",
                    "side_by_side_ms",
                    "size_mb",
                    "worst_cosine",
                    "gate_violations",
                    "error",
                    "seconds",
                )
            }  # fmt: skip
            for t in section["trials"]
        ],
        "notes": section["notes"],
        "search_s": round(time.perf_counter() - started, 1),
        "plan": json.loads((fitted.bundle / "plan.json").read_text()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--factor", type=float, default=0.8)
    parser.add_argument("--fit-budget-s", type=float, default=600.0)
    args = parser.parse_args()
    results = []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix="fit-timm-") as tmp:
            results.append(run(name, args.factor, args.fit_budget_s, Path(tmp)))
        print(json.dumps(results[-1], indent=1), file=sys.stderr, flush=True)
    print(json.dumps({"load_avg": os.getloadavg(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
