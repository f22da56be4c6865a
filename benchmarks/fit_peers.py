"""vdeploy's default x86-cpu FP32 build against the plain peers, side by side (issue 16, done-when 4).

per model (timm, random init): vdeploy build --target x86-cpu (FP32 default: the runtime picked by measurement),
and the same target pinned to each runtime (--runtime openvino / onnxruntime) -> the plain export (torch.onnx.export
defaults, legacy exporter if dynamo fails) -> runners, one persistent child process each (vdeploy.validate.interleave):
torch eager, ONNX Runtime on the plain export, OpenVINO on the plain export (its defaults: bf16 on CPUs with
AVX512_BF16/AMX, so also with the f32 hint), and the three vdeploy bundles -> ROUNDS rotating turns of RUNS
inferences each -> median ms and the ratio of vdeploy's default build to the best FP32 peer.
Every runner uses THREADS threads. Random-init weights: latency only.

Run: .venv/bin/python benchmarks/fit_peers.py [--models deit_tiny_patch16_224,resnet18] [--rounds 30] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

MODELS = {
    "deit_tiny_patch16_224": 224,
    "mobilevit_xs": 256,
    "swin_tiny_patch4_window7_224": 224,
    "resnet18": 224,
}
THREADS = 2
FP32_PEERS = ("torch eager", "ORT plain", "OpenVINO plain f32")


def serve(kind: str, path: str, size: int) -> int:
    """Child: load one runner and answer `run N` turns (vdeploy.validate.interleave_worker protocol)."""
    import numpy as np

    from vdeploy.validate.interleave_worker import main as serve_artifact
    from vdeploy.validate.interleave_worker import serve as serve_fn

    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    if kind == "artifact":
        inputs = Path(path).with_suffix(".inputs.npz")
        return serve_artifact(Path(path), inputs)
    if kind == "eager":
        import torch

        from vdeploy.timm_compat import import_timm

        torch.set_num_threads(THREADS)
        torch.manual_seed(0)
        model = import_timm().create_model(path, pretrained=False).eval()
        tensor = torch.from_numpy(x)

        def run_eager():
            with torch.inference_mode():
                model(tensor)

        return serve_fn(run_eager)
    if kind == "ort":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return serve_fn(lambda: session.run(None, {name: x}))
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": THREADS}
    if kind == "ov-f32":
        config["INFERENCE_PRECISION_HINT"] = "f32"
    request = ov.Core().compile_model(path, "CPU", config).create_infer_request()
    return serve_fn(lambda: request.infer([x]))


def plain_export(name: str, size: int, out: Path) -> tuple[Path, str]:
    import torch

    from vdeploy.timm_compat import import_timm

    torch.manual_seed(0)
    model = import_timm().create_model(name, pretrained=False).eval()
    x = torch.randn(1, 3, size, size)
    path = out / f"{name}.onnx"
    try:
        torch.onnx.export(model, (x,), str(path), external_data=False)
        return path, "dynamo (torch.onnx.export defaults)"
    except Exception:  # the legacy exporter is what a user falls back to
        torch.onnx.export(model, (x,), str(path), dynamo=False)
        return path, "legacy"


def vdeploy_bundles(name: str, out: Path) -> dict[str, tuple[Path, dict]]:
    """label -> (interleave job json, the manifest) for the default build and each runtime pinned; one load and
    one export shared by the three plans."""
    import dataclasses

    import numpy as np

    from vdeploy.api import request_for
    from vdeploy.pipeline import build_target, new_state, resolve_targets
    from vdeploy.plan import Shared, plan, run_plan

    request = request_for(f"timm:{name}", ["x86-cpu"], out=out, iters=5)
    (target,) = resolve_targets(request.targets, None)
    shared = Shared()

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    run_plan(plan(target, request, until="reference"), new_state(request, target, shared, progress))
    bundles = {}
    for label, runtime in (("vdeploy x86-cpu default", None), ("vdeploy openvino", "openvino"),
                           ("vdeploy onnxruntime", "onnxruntime")):  # fmt: skip
        pinned = dataclasses.replace(request, runtime=runtime, out_dir=out / (runtime or "default"))
        built = build_target(new_state(pinned, target, shared, progress))
        job = out / f"{name}-{runtime or 'default'}.json"
        job.write_text(json.dumps({"artifact": built.manifest["artifact"], "bundle_dir": str(built.bundle)}))
        with np.load(built.bundle / "reference_io.npz") as data:
            feeds = {k.split(":", 1)[1]: data[k] for k in data.files if k.startswith("input:")}
        np.savez(job.with_suffix(".inputs.npz"), **feeds)
        bundles[label] = (job, built.manifest)
    return bundles


def measure(name: str, size: int, rounds: int, runs: int, work: Path) -> dict:
    from vdeploy.validate.interleave import interleave

    plain, exporter = plain_export(name, size, work)
    bundles = vdeploy_bundles(name, work)
    me = [sys.executable, __file__, "--serve"]
    runners = {
        "torch eager": (me + ["eager", name, str(size)], {}),
        "ORT plain": (me + ["ort", str(plain), str(size)], {}),
        "OpenVINO plain (defaults)": (me + ["ov", str(plain), str(size)], {}),
        "OpenVINO plain f32": (me + ["ov-f32", str(plain), str(size)], {}),
        **{label: (me + ["artifact", str(job), str(size)], {}) for label, (job, _) in bundles.items()},
    }
    samples = interleave(list(runners.values()), list(runners), rounds=rounds, runs=runs)
    medians = {label: round(statistics.median(s), 3) for label, s in zip(runners, samples)}
    best_peer = min(FP32_PEERS, key=medians.get)
    default = bundles["vdeploy x86-cpu default"][1]
    return {
        "model": name,
        "exporter": exporter,
        "median_ms": medians,
        "best_fp32_peer": best_peer,
        "ratio_default_to_best_fp32_peer": round(medians["vdeploy x86-cpu default"] / medians[best_peer], 3),
        "default_runtime": default["backend"],
        "runtime_pick": default.get("runtime_pick"),
        "samples_per_runner": rounds * runs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3, help="inferences per runner per turn")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve[0], args.serve[1], int(args.serve[2]))
    results = []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory(prefix="fit-peers-") as tmp:
            results.append(measure(name, MODELS[name], args.rounds, args.runs, Path(tmp)))
        if not args.json:
            r = results[-1]
            print(f"\n{name} (plain export: {r['exporter']}; default runtime: {r['default_runtime']})")
            for label, ms in r["median_ms"].items():
                print(f"  {label:28s} {ms:9.2f} ms")
            print(f"  default / best FP32 peer ({r['best_fp32_peer']}): {r['ratio_default_to_best_fp32_peer']:.2f}")
    if args.json:
        print(json.dumps({"threads": THREADS, "load_avg": os.getloadavg(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
