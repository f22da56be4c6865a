#!/usr/bin/env python3
"""Run this vdeploy RKNN bundle on the RK3566/RK3576/RK3588 board: numerics against reference_io.npz, then latency.

Needs `pip install rknn-toolkit-lite2==2.5.0 numpy` on the board (librknnrt.so 2.5.0 and the rknpu driver).
Usage: python3 run_rknn.py [--iters 100]      (run it in the bundle directory or pass --bundle DIR)
Exit codes: 0 worst-sample cosine within the manifest's gate, 3 below it, 1 cannot run.
"""

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--iters", type=int, default=100, choices=range(1, 100001), metavar="N")
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()

    import numpy as np
    from rknnlite.api import RKNNLite

    manifest = json.loads((args.bundle / "manifest.json").read_text())
    info = manifest["artifact"]["details"]["rknn"]
    reference = np.load(args.bundle / "reference_io.npz")
    inputs = [reference[f"input:{i['name']}"] for i in manifest["inputs"]]  # [samples, batch, ...]
    expected = [reference[f"output:{o['name']}"] for o in manifest["outputs"]]
    mean = np.asarray(info["mean_values"], np.float32)[None, :, None, None]
    std = np.asarray(info["std_values"], np.float32)[None, :, None, None]

    def feeds(index):  # a .rknn built with --mean/--std takes pixels: undo the normalization
        return [(x[index] * std + mean if x[index].ndim == 4 else x[index]).astype(np.float32) for x in inputs]

    runtime = RKNNLite()
    if runtime.load_rknn(str(args.bundle / "model.rknn")) != 0:
        print("load_rknn failed", file=sys.stderr)
        return 1
    if runtime.init_runtime(core_mask=RKNNLite.NPU_CORE_AUTO) != 0:
        print("init_runtime failed: is the rknpu driver loaded?", file=sys.stderr)
        return 1
    worst = 1.0
    for index in range(len(inputs[0])):
        outputs = runtime.inference(inputs=feeds(index), data_format="nchw")
        for got, ref in zip(outputs, expected):
            a, b = np.ravel(got).astype(np.float64), np.ravel(ref[index]).astype(np.float64)
            worst = min(worst, float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12)))
    gate = manifest["budgets"]["numerics"]["min_cosine"]
    print(f"numerics: worst-sample cosine vs PyTorch {worst:.6f} over {len(inputs[0])} samples (gate {gate:g})")
    first = feeds(0)
    for _ in range(args.warmup):
        runtime.inference(inputs=first, data_format="nchw")
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        runtime.inference(inputs=first, data_format="nchw")
        times.append((time.perf_counter() - start) * 1000.0)
    times.sort()
    estimate = manifest["artifact"]["details"]["estimate"]["latency_ms"]
    print(
        f"latency: p50 {times[len(times) // 2]:.2f} ms, p90 {times[int(len(times) * 0.9)]:.2f} ms over {args.iters} "
        f"runs on the board (build-time estimate {estimate:.2f} ms, rknn-estimate)"
    )
    runtime.release()
    return 0 if worst >= gate else 3


if __name__ == "__main__":
    sys.exit(main())
