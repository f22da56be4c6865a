"""ARM CPU runtimes side by side on this host: ExecuTorch XNNPACK (.pte), TVM tuned, ONNX Runtime, OpenVINO.

For each timm model, in one run: `vdeploy build` for x86-cpu-xnnpack (the .pte of arm-cortex-a76-xnnpack, built for
this host's architecture), x86-cpu-tvm (--tune-trials N), onnxruntime-cpu and x86-cpu (OpenVINO); then the four
artifacts are opened in this process and timed in alternating rounds on the same input (host figures: this CPU, not
a Cortex-A76). The XNNPACK session runs in the arm toolchain venv behind a pipe
(the pipe transfer of input and output is included in xnnpack_ms: it can only make XNNPACK look slower).

    .venv/bin/python benchmarks/arm_cpu_runtimes.py [--models deit_tiny_patch16_224 mobilevit_xs resnet18]
        [--trials 400] [--no-tvm]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tvm_vs_ort import build, sessions, time_side_by_side  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["deit_tiny_patch16_224", "mobilevit_xs", "resnet18"])
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--no-tvm", action="store_true", help="skip the TVM build (tuning takes minutes per model)")
    args = parser.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", str(len(os.sched_getaffinity(0))))
    cache = Path(os.environ.get("VDEPLOY_CACHE", Path.home() / ".cache" / "vdeploy"))
    for model in args.models:
        with tempfile.TemporaryDirectory(prefix="vdeploy-bench-") as tmp:
            tmp = Path(tmp)
            bundles, build_s = {}, {}
            targets = {"xnnpack": "x86-cpu-xnnpack", "ort": "onnxruntime-cpu", "openvino": "x86-cpu"}
            if not args.no_tvm:
                targets["tvm-tuned"] = "x86-cpu-tvm"
            for name, target in targets.items():
                extra = ("--tune-trials", str(args.trials)) if name == "tvm-tuned" else ()
                bundles[name], build_s[name] = build(model, target, tmp / name, cache, *extra)
            with np.load(bundles["ort"] / "reference_io.npz") as data:
                feeds = {k.split(":", 1)[1]: data[k][0] for k in data.files if k.startswith("input:")}
            opened = sessions(bundles)
            ms = time_side_by_side(opened, feeds, {name: 20 for name in opened})
            for session in opened.values():
                session.__exit__(None, None, None)
            print(
                json.dumps(
                    {
                        "model": model,
                        "threads": int(os.environ["TVM_NUM_THREADS"]),
                        **{f"{k}_ms": round(v, 2) for k, v in ms.items()},
                        "xnnpack_vs_ort": round(ms["xnnpack"] / ms["ort"], 2),
                        **(
                            {"xnnpack_vs_tvm_tuned": round(ms["xnnpack"] / ms["tvm-tuned"], 2)}
                            if "tvm-tuned" in ms
                            else {}
                        ),
                        "build_s": {k: round(v, 1) for k, v in build_s.items()},
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
