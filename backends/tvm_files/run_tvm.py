#!/usr/bin/env python3
"""Run this vdeploy TVM bundle on the device: numerics against reference_io.npz, then latency.

Needs only `pip install apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1 numpy` (aarch64 wheels exist).
Usage: python3 run_tvm.py [--iters 50] [--threads N]      (run it in the bundle directory or pass --bundle DIR)
Exit codes: 0 numerics within the manifest's tolerance, 3 outside it, 1 cannot run.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--iters", type=int, default=50, choices=range(1, 100001), metavar="N")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    manifest = json.loads((args.bundle / "manifest.json").read_text())
    options = manifest["artifact"]["options"]
    os.environ["TVM_NUM_THREADS"] = str(args.threads or options.get("num_threads", 1))

    import numpy as np
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(str(args.bundle / manifest["artifact"]["entry"])), tvm.cpu())
    raw = tvm.runtime.load_param_dict_from_file(str(args.bundle / "params.bin"))
    params = [raw[k] for k in sorted(raw, key=lambda k: int(k.lstrip("p")))]
    if vm.module.implements_function("main_transform_params"):
        params = list(vm["main_transform_params"](params))
    names = json.loads(options["inputs"])
    reference = np.load(args.bundle / "reference_io.npz")
    expected = [reference[k] for k in reference.files if k.startswith("output:")]

    def run(index):
        result = vm["main"](*[tvm.runtime.tensor(reference[f"input:{n}"][index]) for n in names], *params)
        return [t.numpy() for t in flatten(result)]

    samples = reference[f"input:{names[0]}"].shape[0]
    outputs = [run(i) for i in range(samples)]
    worst = 0.0
    for k, ref in enumerate(expected):
        got = np.stack([o[k] for o in outputs])
        worst = max(worst, float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12)))
    tolerance = manifest["budgets"]["numerics"]["max_rel_err"]
    print(f"numerics: max relative error {worst:.3g} over {samples} samples (tolerance {tolerance:g})")
    for _ in range(args.warmup):
        run(0)
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        run(0)
        times.append((time.perf_counter() - start) * 1000.0)
    times.sort()
    print(
        f"latency: p50 {times[len(times) // 2]:.2f} ms, p90 {times[int(len(times) * 0.9)]:.2f} ms "
        f"over {args.iters} runs, {os.environ['TVM_NUM_THREADS']} threads"
    )
    return 0 if worst <= tolerance else 3


def flatten(value):
    if hasattr(value, "numpy"):
        return [value]
    return [t for item in value for t in flatten(item)]


if __name__ == "__main__":
    sys.exit(main())
