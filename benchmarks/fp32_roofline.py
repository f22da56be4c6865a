"""How much faster than the best plain FP32 peer any FP32 build can be on this host: the compute bound (issue 16).

this CPU's FP32 matrix-multiply peak (OpenVINO MatMul 2048 x 2048, f32, THREADS threads, best of 30; the higher of a
measurement before and one after the models)
per model (timm, random init; torch.onnx.export defaults): FLOPs (torch's FlopCounterMode) -> the plain export on
OpenVINO f32 and on ONNX Runtime, timed in alternating turns in this process -> the best peer's median ->
OpenVINO's per-layer profile (PERF_COUNT): the time in GEMM-class layers (FullyConnected, Convolution, MatMul) ->
the bound: an FP32 build cannot beat FLOPs / peak, even with every other layer free; "0.8x the best peer" is out of
reach where 0.8 x best < FLOPs / peak.

Run: .venv/bin/python benchmarks/fp32_roofline.py [--models resnet18,deit_tiny_patch16_224] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# the peers benchmark's four models and thread count (a script's own folder is on sys.path)
from fit_peers import MODELS, THREADS

GEMM_CLASS = ("FullyConnected", "Convolution", "GroupConvolution", "MatMul")
OV_F32 = {"INFERENCE_NUM_THREADS": THREADS, "INFERENCE_PRECISION_HINT": "f32"}


def matmul_peak_gflops(n: int = 2048, runs: int = 30) -> float:
    """The best FP32 GFLOP/s OpenVINO reaches on one large MatMul here."""
    import onnx
    import openvino as ov
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(model, f"{tmp}/mm.onnx")
        request = ov.Core().compile_model(f"{tmp}/mm.onnx", "CPU", OV_F32).create_infer_request()
    x = rng.standard_normal((n, n)).astype(np.float32)
    for _ in range(3):
        request.infer([x])
    best = min(_timed(lambda: request.infer([x])) for _ in range(runs))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def export(name: str, size: int, out: Path):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from vdeploy.timm_compat import import_timm

    torch.manual_seed(0)
    model = import_timm().create_model(name, pretrained=False).eval()
    x = torch.randn(1, 3, size, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    path = out / f"{name}.onnx"
    try:
        torch.onnx.export(model, (x,), str(path), external_data=False)
    except Exception:  # the legacy exporter is what a user falls back to
        torch.onnx.export(model, (x,), str(path), dynamo=False)
    return path, counter.get_total_flops(), x.numpy()


def measure(name: str, size: int, rounds: int, work: Path) -> dict:
    import onnxruntime as ort
    import openvino as ov

    path, flops, x = export(name, size, work)
    core = ov.Core()
    request = core.compile_model(str(path), "CPU", OV_F32).create_infer_request()
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    runners = {"OpenVINO plain f32": lambda: request.infer([x]), "ORT plain": lambda: session.run(None, feed)}
    samples: dict[str, list[float]] = {label: [] for label in runners}
    for fn in runners.values():
        for _ in range(5):
            fn()
    for r in range(rounds):
        for label in list(runners)[:: 1 if r % 2 else -1]:
            samples[label].append(1000 * _timed(runners[label]))
    profiled = core.compile_model(str(path), "CPU", {**OV_F32, "PERF_COUNT": True}).create_infer_request()
    gemm_ms, total_ms = [], []  # profiling slows the run: its own compiled model, after the timing
    for _ in range(15):
        profiled.infer([x])
        layers = profiled.profiling_info
        total_ms.append(sum(p.real_time.total_seconds() for p in layers) * 1000)
        gemm_ms.append(sum(p.real_time.total_seconds() for p in layers if p.node_type in GEMM_CLASS) * 1000)
    medians = {label: round(statistics.median(s), 3) for label, s in samples.items()}
    best_label = min(medians, key=medians.get)
    best = medians[best_label]
    gemm, total = statistics.median(gemm_ms[5:]), statistics.median(total_ms[5:])
    return {
        "model": name,
        "gflop": round(flops / 1e9, 3),
        "median_ms": medians,
        "best_peer": best_label,
        "best_peer_gflops": round(flops / best / 1e6, 1),
        "ov_gemm_share": round(gemm / total, 3),  # of the profiled run's layer time
    }


def bound(row: dict, peak: float) -> dict:
    """The row with the compute bound at `peak` GFLOP/s and what 0.8x the best peer would need."""
    bound_ms = row["gflop"] / peak * 1000
    best = row["median_ms"][row["best_peer"]]
    return {
        **row,
        "bound_ms_at_peak": round(bound_ms, 3),
        "target_ms_0.8x": round(0.8 * best, 3),
        "needs_pct_of_peak": round(100 * bound_ms / (0.8 * best), 1),
        "reachable": 0.8 * best >= bound_ms,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    peak = matmul_peak_gflops()
    results = []
    with tempfile.TemporaryDirectory(prefix="fp32-roofline-") as tmp:
        for name in args.models.split(","):
            results.append(measure(name, MODELS[name], args.rounds, Path(tmp)))
    peak_after = matmul_peak_gflops()  # the host's speed drifts: the higher figure bounds (the generous side)
    results = [bound(r, max(peak, peak_after)) for r in results]
    if args.json:
        print(json.dumps({"threads": THREADS, "load_avg": os.getloadavg(), "matmul_peak_gflops": [round(peak, 1),
              round(peak_after, 1)], "results": results}, indent=2))  # fmt: skip
        return 0
    print(f"FP32 MatMul peak (OpenVINO, {THREADS} threads): {peak:.0f} GFLOP/s before, {peak_after:.0f} after")
    print("| model | GFLOP | best plain peer | its GFLOP/s | OpenVINO: time in GEMM-class layers | bound at peak | "
          "0.8x best | needs (% of peak) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        best = r["median_ms"][r["best_peer"]]
        print(
            f"| {r['model']} | {r['gflop']} | {r['best_peer']} {best:.2f} ms | {r['best_peer_gflops']} | "
            f"{100 * r['ov_gemm_share']:.0f} % | {r['bound_ms_at_peak']:.2f} ms | "
            f"{r['target_ms_0.8x']:.2f} ms | {r['needs_pct_of_peak']} %{'' if r['reachable'] else ' (out of reach)'} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
