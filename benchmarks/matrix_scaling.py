"""Release matrix on one machine: sequential single builds vs `vdeploy matrix` (embedded Ray), and a scaling model.

4 timm models (random init) x 3 targets -> (a) 12 `vdeploy build timm:M --target T` processes one after another,
(b) one `vdeploy matrix` on the embedded Ray, (c) the same matrix again, unchanged (resume). Wall time of each, the
per-task times the matrix measured, and the predicted wall time on N machines like this one (tasks placed longest
first, as many at once per machine as it has CPUs, as the embedded Ray runs them here).

    .venv/bin/python benchmarks/matrix_scaling.py [--models ...] [--targets ...] [--json OUT.json]

Scaling model: T(N) = overhead + makespan(task times, N x slots), makespan by longest-task-first placement, never
below the longest task (the critical path: cells are independent, so the longest build bounds any cluster).
overhead = measured matrix wall - makespan of the measured task times on this machine's slots (Ray start, worker
start and imports, cell keys, release.json/html).
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from vdeploy.manifest import measured

MODELS = ["deit_tiny_patch16_224", "mobilevit_xs", "swin_tiny_patch4_window7_224", "resnet18"]
TARGETS = ["onnxruntime-cpu", "x86-cpu", "jetson"]
VDEPLOY = str(Path(sys.executable).with_name("vdeploy"))


def makespan(times: list[float], slots: int) -> float:
    """Longest-task-first placement of independent tasks on `slots` equal slots: the finish time of the last one."""
    finish = [0.0] * max(slots, 1)
    for t in sorted(times, reverse=True):
        heapq.heapreplace(finish, finish[0] + t)
    return max(finish)


def sequential(models, targets, out: Path) -> tuple[float, dict]:
    """(wall, {(model, target name): {wall_s, verdict}}) of one `vdeploy build` process per cell, in series."""
    cells, started = {}, time.perf_counter()
    for model in models:
        for target in targets:
            t0 = time.perf_counter()
            cmd = [VDEPLOY, "build", f"timm:{model}", "--target", target, "--out", str(out), "--json"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            ok = proc.returncode in (0, 3)
            manifest = json.loads(proc.stdout) if ok else {}
            verdict = manifest.get("verdict", f"exit {proc.returncode}")
            p50 = (measured(manifest, "latency_ms") or {}).get("p50")
            cells[(model, manifest.get("target", target))] = {"wall_s": round(wall, 2), "verdict": verdict, "p50": p50}
            print(f"  single build {model} x {target}: {wall:.1f} s ({verdict})", flush=True)
    return time.perf_counter() - started, cells


def matrix(release: Path, out: Path) -> tuple[float, dict, str]:
    """(wall, release.json, what a user sees: progress lines + summary) of `vdeploy matrix` off a terminal."""
    started = time.perf_counter()
    cmd = [VDEPLOY, "matrix", str(release), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "150"})
    wall = time.perf_counter() - started
    if not (out / "release.json").is_file():
        sys.exit(f"vdeploy matrix failed: {proc.stderr[-2000:]}")
    return wall, json.loads((out / "release.json").read_text()), proc.stderr + proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--targets", nargs="+", default=TARGETS)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    slots = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        release = tmp / "release.yaml"
        release.write_text(
            yaml.safe_dump(
                {"name": "timm4", "targets": args.targets, "models": [{"path": f"timm:{m}"} for m in args.models]}
            )
        )
        print(f"sequential single builds ({len(args.models)} x {len(args.targets)}):", flush=True)
        seq_wall, seq_cells = sequential(args.models, args.targets, tmp / "single")
        print(f"vdeploy matrix (embedded Ray, {slots} CPUs):", flush=True)
        mx_wall, data, shown = matrix(release, tmp / "matrix")
        again_wall, again, shown_again = matrix(release, tmp / "matrix")
        print(shown, shown_again, sep="\n", flush=True)
    tasks = {(c["model"].removeprefix("timm:"), c["target"]): c for c in data["cells"]}
    times = [c["seconds"] for c in tasks.values() if c.get("seconds")]
    overhead = mx_wall - makespan(times, slots)
    figures = {
        "machine": f"{slots} CPUs, shared with other jobs while measured",
        "sequential_wall_s": round(seq_wall, 1),
        "matrix_wall_s": round(mx_wall, 1),
        "speedup": round(seq_wall / mx_wall, 2),
        "matrix_unchanged_rerun_s": round(again_wall, 1),
        "rerun_built": again["built"],
        "overhead_s": round(overhead, 1),
        "critical_path_s": round(max(times), 1),
        "verdicts_equal": all(c["verdict"] == seq_cells.get(k, {}).get("verdict") for k, c in tasks.items()),
        "tasks": {
            f"{m} x {t}": {
                "task_s": round(c.get("seconds") or 0, 1),
                "verdict": c["status"],
                "single_build_wall_s": seq_cells.get((m, t), {}).get("wall_s"),
                "p50_ms_matrix": c.get("latency_p50_ms"),  # measured while another build ran on the machine
                "p50_ms_single": seq_cells.get((m, t), {}).get("p50"),
            }
            for (m, t), c in tasks.items()
        },
        "predicted_wall_s": {n: round(overhead + makespan(times, slots * n), 1) for n in (1, 2, 3, 4, 6, 12)},
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
