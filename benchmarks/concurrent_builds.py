"""Concurrent builds of one bundle (issue 15): W `vdeploy build` processes write OUT/cnn-onnxruntime-cpu at once.

python benchmarks/concurrent_builds.py [--writers 4] [--rounds 100] [--no-cache] [--work DIR]
Each writer builds its own cnn.pt2 (the golden CNN, a different seed each: different weights, so a bundle mixed from
two writers would show as files that do not match the manifest). With the build cache on (the default) the first
round builds and stores all four and every later round restores them — short, clustered finishes, the hardest case
for the final swap; --no-cache rebuilds every time. After every round: every writer exited 0 (or 3), exactly one
bundle directory and nothing else in --out, its manifest is strict JSON, every file matches its sha256, and it is
one writer's (its model sha256 is one of the four).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VDEPLOY = str(Path(sys.executable).with_name("vdeploy"))
NAME = "cnn-onnxruntime-cpu"


def make_models(work: Path, writers: int) -> list[Path]:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.models import GOLDEN

    build_fn, shape = GOLDEN["cnn"]
    paths = []
    for i in range(writers):
        path = work / f"writer{i}" / "cnn.pt2"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.export.save(torch.export.export(build_fn(seed=i), (torch.randn(shape),)), str(path))
        paths.append(path)
    return paths


def check_round(out: Path, model_hashes: set[str]) -> str | None:
    entries = sorted(p.name for p in out.iterdir())
    if entries != [NAME]:
        return f"--out holds {entries}"
    bundle = out / NAME

    def refuse(constant):
        raise ValueError(f"non-standard JSON {constant}")

    try:
        manifest = json.loads((bundle / "manifest.json").read_text(), parse_constant=refuse)
    except (OSError, ValueError) as exc:
        return f"manifest: {exc}"
    if manifest["model"]["sha256"] not in model_hashes:
        return "the manifest names no writer's model"
    on_disk = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    listed = sorted([*(f["path"] for f in manifest["files"]), "manifest.json", "report.html"])
    if on_disk != listed:
        return f"files {on_disk} != manifest {listed}"
    for entry in manifest["files"]:
        if hashlib.sha256((bundle / entry["path"]).read_bytes()).hexdigest() != entry["sha256"]:
            return f"{entry['path']} does not match the manifest (mixed bundle)"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="concurrent-builds-"))
    models = make_models(work, args.writers)
    hashes = {hashlib.sha256(m.read_bytes()).hexdigest() for m in models}
    env = {**os.environ, "VDEPLOY_CACHE": str(work / "cache"), "VDEPLOY_BUILD_CACHE": "on"}
    out = work / "out"
    failures, seconds, winners = [], [], {}
    for round_no in range(args.rounds):
        started = time.monotonic()
        procs = [
            subprocess.Popen(
                [VDEPLOY, "build", str(m), "-t", "onnxruntime-cpu", "--out", str(out), "--iters", "5"]
                + (["--no-cache"] if args.no_cache else []),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for m in models
        ]
        results = [(p.wait(), p.stderr.read()) for p in procs]
        seconds.append(time.monotonic() - started)
        bad = [f"exit {code}: {err.strip().splitlines()[-1:]}" for code, err in results if code not in (0, 3)]
        problem = check_round(out, hashes)
        if problem is None:
            winner = json.loads((out / NAME / "manifest.json").read_text())["model"]["path"]
            winners[winner] = winners.get(winner, 0) + 1
        if bad or problem:
            failures.append({"round": round_no, "writers": bad, "bundle": problem})
            print(json.dumps(failures[-1]), flush=True)
        if round_no % 10 == 9:
            print(f"round {round_no + 1}: {len(failures)} failed so far, {seconds[-1]:.1f} s/round", flush=True)
    mode = "--no-cache (every build full)" if args.no_cache else "cache on (round 1 builds, later rounds restore)"
    print(
        f"\n{args.writers} writers x {args.rounds} rounds, {mode}: {args.rounds - len(failures)} rounds ended with "
        f"one whole, verifying bundle; {len(failures)} failed; median {sorted(seconds)[len(seconds) // 2]:.1f} s per "
        f"round; last writer per round: {sorted(winners.values(), reverse=True)}"
    )
    (work / "concurrent_builds.json").write_text(json.dumps({"failures": failures, "winners": winners}, indent=1))


if __name__ == "__main__":
    main()
