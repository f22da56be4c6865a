"""Device runner for an ExecuTorch XNNPACK bundle: check model.pte against reference_io.npz and time it.

On the board (aarch64 Linux, Python 3.10-3.12):  pip install executorch==1.5.1 numpy  &&  python3 run_pte.py
reference_io.npz (inputs, PyTorch outputs) -> executorch.runtime -> cosine / max rel err per output -> p50/p90 ms
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch
from executorch.runtime import Runtime

HERE = Path(__file__).resolve().parent


def main(warmup: int = 10, iters: int = 50) -> int:
    method = Runtime.get().load_program(str(HERE / "model.pte")).load_method("forward")
    ref = np.load(HERE / "reference_io.npz")
    inputs = [ref[k] for k in ref.files if k.startswith("input:")]
    expected = [ref[k] for k in ref.files if k.startswith("output:")]
    worst = 1.0
    for i in range(len(inputs[0])):
        outs = method.execute([torch.from_numpy(np.ascontiguousarray(a[i])) for a in inputs])
        for out, exp in zip(outs, expected):
            got, want = out.numpy().ravel().astype(np.float64), exp[i].ravel().astype(np.float64)
            worst = min(worst, float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want) + 1e-30)))
    first = [torch.from_numpy(np.ascontiguousarray(a[0])) for a in inputs]
    for _ in range(warmup):
        method.execute(first)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        method.execute(first)
        times.append((time.perf_counter() - start) * 1000.0)
    print(
        f"worst cosine vs PyTorch {worst:.6f}; latency p50 {np.percentile(times, 50):.3f} ms, "
        f"p90 {np.percentile(times, 90):.3f} ms ({iters} runs)"
    )
    return 0 if worst >= float(sys.argv[1] if len(sys.argv) > 1 else 0.999) else 3


if __name__ == "__main__":
    sys.exit(main())
