"""The README's Rockchip table: timm models built for an RKNN target at fp16 and int8, one row per model x precision.

`vdeploy build timm:M --target T --precision P --json` -> the compiler's NPU share (rknn-toolkit2 placement), its
estimated ms (cycles / NPU clock), the simulator's cosine vs PyTorch, model.rknn size, build time. INT8 calibrates on
the scikit-learn / scikit-image sample photos (tests/models/pretrained.py save_photos), ImageNet mean/std; where the
plain INT8 build misses the gate the backend rebuilds with the compiler's hybrid quantization (last column).

    .venv/bin/python benchmarks/rknn_timm.py [--models deit_tiny_patch16_224 ...] [--target rk3588-npu]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.models.pretrained import save_photos  # noqa: E402

MODELS = ["deit_tiny_patch16_224", "mobilevit_xs", "swin_tiny_patch4_window7_224", "resnet18"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--target", default="rk3588-npu")
    parser.add_argument("--precisions", nargs="+", default=["fp16", "int8"])
    args = parser.parse_args()
    print(
        "| model | precision | NPU share (layers) | est. ms (rknn-estimate) | simulator cosine (worst sample) "
        "| .rknn MB | build s | INT8: hybrid level, FP16 layers |",
        flush=True,
    )
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as photos:
        save_photos(Path(photos))
        for model in args.models:
            for precision in args.precisions:
                print(row(model, args.target, precision, photos), flush=True)


def row(model: str, target: str, precision: str, photos: str) -> str:
    with tempfile.TemporaryDirectory() as out:
        calib = ["--calib", photos] if precision == "int8" else []
        cmd = [sys.executable, "-m", "vdeploy", "build", f"timm:{model}", "--target", target]
        cmd += ["--precision", precision, "--out", out, "--json", *calib]
        started = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if proc.returncode not in (0, 3):
            reason = (proc.stderr.strip().splitlines() or ["no output"])[-1][:120]
            return f"| {model} | {precision} | build failed: {reason} | | | | {seconds:.0f} | |"
        m = json.loads(proc.stdout)
        details = m["artifact"]["details"]
        counts, est = details["placement"]["counts"], details["estimate"]
        rknn_mb = next(f["bytes"] for f in m["files"] if f["path"] == "model.rknn") / 1e6
        share = f"{details['placement']['npu_share_pct']:.1f} % ({counts['NPU']}/{counts['NPU'] + counts['CPU']})"
        int8 = details["rknn"].get("int8")
        hybrid = ""
        if int8:
            tried = ", ".join(f"{a['hybrid_level']}: {a['worst_cosine']:.3f}" for a in int8["attempts"])
            hybrid = f"{int8['hybrid_level']} ({int8['layer_dtypes'].get('FLOAT16', 0)} FP16; tried {tried})"
        numerics = m["numerics"]
        return (
            f"| {model} | {precision} | {share} | {est['latency_ms']:.2f} | {numerics['cosine']:.4f} "
            f"({numerics['worst_sample_cosine']:.4f}) | {rknn_mb:.1f} | {seconds:.0f} | {hybrid} |"
        )


if __name__ == "__main__":
    main()
