"""Pruned vs unpruned latency of vdeploy's own bundles, onnxruntime-cpu and x86-cpu (OpenVINO), one interleaved run.

timm model (random init) -> .pt2 -> vdeploy build, unpruned and with prune_heads={"count": 1, "per_block": true}
(the least important head of every block by measured ablation; deit_tiny: 1 of 3 heads) -> every artifact opened
in this process through its backend -> warm-up -> ROUNDS rounds, each timing RUNS inferences of every artifact in a
rotating order -> p50 / p90 and pruned/unpruned ratio per target, with what pruning removed (params, counted FLOPs)
and what it cost (cosine against the unpruned model, from the build's own judge). Batch 1, default threads.
Random-init weights: the accuracy cost here is not a trained model's; tests/test_pruning_digits.py measures that.

Run: .venv/bin/python benchmarks/prune_latency.py [--models deit_tiny,swin_tiny] [--rounds 20] [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGETS = ("onnxruntime-cpu", "x86-cpu")
MODELS = {
    "deit_tiny": ("deit_tiny_patch16_224", 224),
    "swin_tiny": ("swin_tiny_patch4_window7_224", 224),
    "vit_small": ("vit_small_patch16_224", 224),
}
PRUNING = {"count": 1, "per_block": True}
WARMUP = 10


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="deit_tiny")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5, help="inferences per artifact per round")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            results[name] = measure(name, Path(tmp), args.rounds, args.runs)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        report(results, args.rounds, args.runs)
    return 0


def measure(name: str, tmp: Path, rounds: int, runs: int) -> dict:
    import numpy as np

    from vdeploy.backends import get_backend
    from vdeploy.backends.base import Artifact
    from vdeploy.pipeline import BuildRequest, build
    from vdeploy.prune_stage import HeadPruning

    path, size = export(name, tmp)
    built, build_s = {}, {}
    for variant, pruning in (("unpruned", None), ("pruned", HeadPruning.of(PRUNING))):
        start = time.perf_counter()
        request = BuildRequest(
            model=str(path), targets=TARGETS, out_dir=tmp / name / variant, iters=3, prune_heads=pruning
        )
        for outcome in build(request):
            if outcome.error:
                raise SystemExit(f"{name} {variant} {outcome.target}: {outcome.error.one_line()}")
            built[outcome.target, variant] = outcome.result
        build_s[variant] = round(time.perf_counter() - start, 1)
    sessions = {}
    for key, result in built.items():
        artifact = Artifact.from_dict(result.manifest["artifact"])
        sessions[key] = get_backend(artifact.backend).open(artifact, result.bundle)
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    feeds = {key: {session.input_names[0]: x} for key, session in sessions.items()}
    for key, session in sessions.items():
        for _ in range(WARMUP):
            session.run(feeds[key])
    times: dict = {key: [] for key in sessions}
    keys = list(sessions)
    for r in range(rounds):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:  # rotate the order each round
            for _ in range(runs):
                start = time.perf_counter()
                sessions[key].run(feeds[key])
                times[key].append((time.perf_counter() - start) * 1e3)
    pruning = built[TARGETS[0], "pruned"].manifest["pruning"]
    rows = {}
    for target in TARGETS:
        cells = {}
        for variant in ("unpruned", "pruned"):
            samples = sorted(times[target, variant])
            cells[variant] = {
                "p50_ms": round(statistics.median(samples), 3),
                "p90_ms": round(samples[int(0.9 * (len(samples) - 1))], 3),
                "cosine_vs_unpruned": built[target, variant].numerics["cosine"],
                "verdict": built[target, variant].verdict,
            }
        cells["ratio"] = round(cells["pruned"]["p50_ms"] / cells["unpruned"]["p50_ms"], 3)
        rows[target] = cells
    for session in sessions.values():
        session.__exit__(None, None, None)
    return {
        "targets": rows,
        "heads": f"{pruning['heads_removed']} of {pruning['heads_total']} removed",
        "params_removed": pruning["params_removed"],
        "flops_counted": pruning["flops_counted"],
        "build_s": build_s,
        "rounds": rounds,
        "runs": runs,
    }


def export(name: str, tmp: Path) -> tuple[Path, int]:
    import torch

    from vdeploy.timm_compat import import_timm

    arch, size = MODELS[name]
    torch.manual_seed(0)
    module = import_timm().create_model(arch, pretrained=False).eval()
    path = tmp / f"{name}.pt2"
    torch.export.save(torch.export.export(module, (torch.randn(1, 3, size, size),)), path)
    return path, size


def report(results: dict, rounds: int, runs: int) -> None:
    print(f"{rounds} rounds x {runs} runs per artifact, artifacts interleaved in one process; default threads\n")
    print(f"{'model':10} {'target':16} {'unpruned p50':>13} {'pruned p50':>11} {'pruned/unpruned':>16} {'cosine':>8}")
    for name, result in results.items():
        for target, row in result["targets"].items():
            print(
                f"{name:10} {target:16} {row['unpruned']['p50_ms']:10.2f} ms {row['pruned']['p50_ms']:8.2f} ms "
                f"{row['ratio']:15.3f}x {row['pruned']['cosine_vs_unpruned']:8.4f}"
            )
        flops = result["flops_counted"]
        print(
            f"{'':10} heads {result['heads']}, {result['params_removed']:,} params, counted FLOPs "
            f"{flops['unpruned'] / 1e9:.3f} -> {flops['pruned'] / 1e9:.3f} G (-{flops['removed_pct']:.1f}%); "
            f"builds {result['build_s']['unpruned']} s / {result['build_s']['pruned']} s\n"
        )


if __name__ == "__main__":
    sys.exit(main())
