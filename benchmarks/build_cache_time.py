"""Full build vs build-cache restore (issue 15), interleaved in one run, and whether the bytes are the same.

python benchmarks/build_cache_time.py [--model timm:deit_tiny_patch16_224] [--target x86-cpu] [--repeats 3]
separate processes: `vdeploy build --no-cache` and `vdeploy build` (a cache hit) alternated, wall time of each
one process:        vdeploy.build(no_cache=True) and vdeploy.build() alternated after one warm-up build
bytes: every file in files[] of a full build, of a second full build and of a restore compared; the manifests
compared outside their `measured` section.
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

VDEPLOY = str(Path(sys.executable).with_name("vdeploy"))


def files(bundle: Path) -> dict[str, bytes]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    return {f["path"]: (bundle / f["path"]).read_bytes() for f in manifest["files"]}


def reproducible(bundle: Path) -> dict:
    return {k: v for k, v in json.loads((bundle / "manifest.json").read_text()).items() if k != "measured"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="timm:deit_tiny_patch16_224")
    parser.add_argument("--target", default="x86-cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="build-cache-time-"))
    os.environ.update({"VDEPLOY_CACHE": str(work / "cache"), "VDEPLOY_BUILD_CACHE": "on"})
    cli = {"full": [], "cached": []}
    bundles = {}
    for i in range(args.repeats):
        for kind in ("full", "cached"):
            out = work / f"cli-{kind}-{i}"
            cmd = [VDEPLOY, "build", args.model, "-t", args.target, "--out", str(out), "--iters", "20"]
            started = time.perf_counter()
            proc = subprocess.run(cmd + (["--no-cache"] if kind == "full" else []), capture_output=True, text=True)
            cli[kind].append(time.perf_counter() - started)
            if proc.returncode not in (0, 3):
                sys.exit(proc.stderr[-2000:])
            bundles.setdefault(kind, []).append(next(p for p in out.iterdir() if not p.name.startswith(".")))
        print(f"cli round {i}: full {cli['full'][-1]:.2f} s, cached {cli['cached'][-1]:.2f} s", flush=True)

    import vdeploy

    api = {"full": [], "cached": []}
    vdeploy.build(args.model, args.target, out=work / "api-warm", iters=20, no_cache=True)
    for i in range(args.repeats):
        for kind in ("full", "cached"):
            started = time.perf_counter()
            vdeploy.build(args.model, args.target, out=work / f"api-{kind}-{i}", iters=20, no_cache=kind == "full")
            api[kind].append(time.perf_counter() - started)
        print(f"api round {i}: full {api['full'][-1]:.2f} s, cached {api['cached'][-1]:.2f} s", flush=True)

    full, again, restored = bundles["full"][0], bundles["full"][-1], bundles["cached"][-1]
    source = Path(json.loads((restored / "manifest.json").read_text())["measured"]["cache"]["bundle"])
    print(f"\n{args.model} on {args.target}, {args.repeats} interleaved repeats (median, this loaded 2-core host):")
    for name, times in (("separate CLI processes", cli), ("one Python process (API)", api)):
        f, c = statistics.median(times["full"]), statistics.median(times["cached"])
        print(f"  {name}: full build {f:.2f} s, cached rebuild {c:.2f} s (x{f / c:.1f} faster)")
    same_files, same_manifest = files(restored) == files(source), reproducible(restored) == reproducible(source)
    print(
        f"  restore vs the build it came from ({source.parent.name}): artifact files byte-identical {same_files}, "
        f"manifests outside `measured` equal {same_manifest}"
    )
    print(
        f"  two full builds: artifact files byte-identical {files(full) == files(again)}, manifests outside "
        f"`measured` equal {reproducible(full) == reproducible(again)} (timm:NAME is random-initialised per build)"
    )
    print(f"  files: {', '.join(f'{k} ({len(v)} B)' for k, v in files(full).items())}")


if __name__ == "__main__":
    main()
