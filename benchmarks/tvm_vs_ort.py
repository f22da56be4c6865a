"""TVM host artifact vs ONNX Runtime FP32, before and after tuning, and the rebuild time on a tuning-cache hit.

For each model, in one run: `vdeploy build --target onnxruntime-cpu`; `--target x86-cpu-tvm --tune-trials 0`
(untuned); `--tune-trials N` in a fresh tuning cache (first tuned build, timed); the same build again (cache hit,
timed). Then the three artifacts are timed side by side in this process, in alternating rounds, on the same input.

    .venv/bin/python benchmarks/tvm_vs_ort.py [--models deit_tiny_patch16_224 resnet18] [--trials 400]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VDEPLOY = [sys.executable, "-m", "vdeploy"]


def build(model: str, target: str, out: Path, cache: Path, *extra: str) -> tuple[Path, float]:
    """Run `vdeploy build`; -> (bundle dir, wall seconds)."""
    started = time.perf_counter()
    proc = subprocess.run(
        [*VDEPLOY, "build", f"timm:{model}", "--target", target, "--out", str(out), "--json", "--iters", "5", *extra],
        capture_output=True,
        text=True,
        env={**os.environ, "VDEPLOY_CACHE": str(cache)},
    )
    seconds = time.perf_counter() - started
    if proc.returncode not in (0, 3):
        sys.exit(f"build failed ({target}): {proc.stderr.strip().splitlines()[-1]}")
    return out / f"{model}-{target}", seconds


def sessions(bundles: dict[str, Path]) -> dict:
    from vdeploy.backends import get_backend
    from vdeploy.backends.base import Artifact

    opened = {}
    for name, bundle in bundles.items():
        artifact = Artifact.from_dict(json.loads((bundle / "manifest.json").read_text())["artifact"])
        opened[name] = get_backend(artifact.backend).open(artifact, bundle)
    return opened


def time_side_by_side(opened: dict, feeds: dict, runs: dict[str, int], rounds: int = 5) -> dict[str, float]:
    """Median ms per artifact over alternating rounds (noise on this shared machine hits all of them alike)."""
    samples = {name: [] for name in opened}
    for session in opened.values():
        session.run(feeds)  # warm-up
    for _ in range(rounds):
        for name, session in opened.items():
            for _ in range(runs[name]):
                start = time.perf_counter()
                session.run(feeds)
                samples[name].append((time.perf_counter() - start) * 1000.0)
    return {name: statistics.median(values) for name, values in samples.items()}


def tuning(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())["artifact"]["details"]["tuning"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["deit_tiny_patch16_224", "resnet18"])
    parser.add_argument("--trials", type=int, default=400)
    args = parser.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))
    for model in args.models:
        with tempfile.TemporaryDirectory(prefix="vdeploy-bench-") as tmp:
            tmp = Path(tmp)
            ort, _ = build(model, "onnxruntime-cpu", tmp / "out", tmp / "cache-unused")
            untuned, _ = build(model, "x86-cpu-tvm", tmp / "untuned", tmp / "cache-empty", "--tune-trials", "0")
            tuned, first_s = build(
                model, "x86-cpu-tvm", tmp / "tuned", tmp / "cache", "--tune-trials", str(args.trials)
            )
            _, rebuild_s = build(
                model, "x86-cpu-tvm", tmp / "rebuilt", tmp / "cache", "--tune-trials", str(args.trials)
            )
            with np.load(ort / "reference_io.npz") as data:
                feeds = {k.split(":", 1)[1]: data[k][0] for k in data.files if k.startswith("input:")}
            opened = sessions({"ort": ort, "tvm-untuned": untuned, "tvm-tuned": tuned})
            ms = time_side_by_side(opened, feeds, {"ort": 20, "tvm-untuned": 2, "tvm-tuned": 20})
            first, again = tuning(tuned), tuning(tmp / "rebuilt" / f"{model}-x86-cpu-tvm")
            print(
                json.dumps(
                    {
                        "model": model,
                        "threads": int(os.environ["TVM_NUM_THREADS"]),
                        "ort_ms": round(ms["ort"], 2),
                        "tvm_untuned_ms": round(ms["tvm-untuned"], 2),
                        "tvm_tuned_ms": round(ms["tvm-tuned"], 2),
                        "ratio_untuned_vs_ort": round(ms["tvm-untuned"] / ms["ort"], 2),
                        "ratio_tuned_vs_ort": round(ms["tvm-tuned"] / ms["ort"], 2),
                        "tune_trials": args.trials,
                        "trials_run": first["trials"],
                        "tasks": first["tasks"],
                        "tuning_s": first["seconds"],
                        "first_build_s": round(first_s, 1),
                        "rebuild_s": round(rebuild_s, 1),
                        "rebuild_trials": again["trials"],
                        "rebuild_speedup": round(first_s / rebuild_s, 1),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
