"""The docs/arm.md Ethos-U table: timm models built for Ethos-U targets through Vela, one row per model x target.

`vdeploy build timm:M --target T --json` -> NPU share (Vela placement), Vela's estimated ms, SRAM KiB, INT8 cosine
(LiteRT run of the fully INT8 .tflite vs PyTorch, seeded random calibration unless --calib is given).

    .venv/bin/python benchmarks/arm_ethos_table.py [--models deit_tiny_patch16_224 mobilevit_xs resnet18 | M.pt2]
        [--targets ethos-u55-128 ethos-u85-256] [--calib DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["deit_tiny_patch16_224", "mobilevit_xs", "resnet18"])
    parser.add_argument("--targets", nargs="+", default=["ethos-u55-128", "ethos-u85-256"])
    parser.add_argument("--calib")
    args = parser.parse_args()
    print(
        "| model | target | NPU share | est. ms (Vela) | cycles | SRAM KiB | flash KiB | INT8 cosine (worst) "
        "| build s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for model in args.models:
        for target in args.targets:
            with tempfile.TemporaryDirectory() as out:
                started = time.perf_counter()
                cmd = [
                    sys.executable,
                    "-m",
                    "vdeploy",
                    "build",
                    model if model.endswith(".pt2") else f"timm:{model}",
                    "--target",
                    target,
                    "--out",
                    out,
                    "--json",
                    *(["--calib", args.calib] if args.calib else []),
                ]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                seconds = time.perf_counter() - started
            if proc.returncode not in (0, 3):
                reason = (proc.stderr.strip().splitlines() or ["no output"])[-1][:120]
                print(f"| {model} | {target} | build failed: {reason} | | | | | | {seconds:.0f} |", flush=True)
                continue
            m = json.loads(proc.stdout)
            est, counts = m["artifact"]["details"]["estimate"], m["artifact"]["details"]["placement"]["counts"]
            print(
                f"| {model} | {target} | {est['npu_share_pct']:.1f} % ({counts['NPU']}/{counts['NPU'] + counts['CPU']})"
                f" | {est['latency_ms']:.2f} | {est['cycles']:,.0f} | {est['sram_kb']:.0f}"
                f" | {est.get('flash_kb', 0):.0f} |"
                f" {m['numerics']['cosine']:.4f} ({m['numerics']['worst_sample_cosine']:.4f}) | {seconds:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
