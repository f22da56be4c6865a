"""FP32 vs BF16 vs INT8 latency on OpenVINO (CPU), deit_tiny and resnet18, measured in one process, interleaved.

probe bf16/int8 in child processes (vdeploy.cpu_features) -> re-run this script as a child with the ISA cap the
probes chose (none when the default ISA works) -> per model: timm (random init) -> ONNX (legacy exporter, opset 17,
onnxsim) -> ov.convert_model -> FP32 (hint f32), BF16 (hint bf16), INT8 (NNCF, transformer-aware placement) and
INT8 naive beside it (both calibrated on crops of sklearn's two sample photos; hint f32 as the vdeploy OpenVINO
backend sets it) -> compile all four -> warm up -> ROUNDS rounds, each timing RUNS inferences of every variant
in a rotating order -> median ms, p90 and ratio to FP32, and the kernels OpenVINO picked for Conv/FC (AMX or not).
Batch 1, 224x224, LATENCY hint. Random-init weights: latency only, no accuracy.

Run: .venv/bin/python benchmarks/precision_latency.py [--rounds N] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter

MODELS = ("deit_tiny_patch16_224", "resnet18")
VARIANTS = ("fp32", "bf16", "int8", "int8-naive")
# the hints vdeploy.backends.openvino.INFERENCE_PRECISION sets
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32", "int8-naive": "f32"}
CALIB_CROPS = 32
WARMUP = 10


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5, help="inferences per variant per round")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.rounds, args.runs)))
        return 0

    from vdeploy.cpu_features import probe_bf16, probe_int8

    probes = {"bf16": probe_bf16(), "int8": probe_int8()}
    env = {**probes["int8"].env(), **probes["bf16"].env()}  # one process: the bf16 cap (lower) wins if both set
    command = [sys.executable, __file__, "--child", "--rounds", str(args.rounds), "--runs", str(args.runs)]
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env})
    if proc.returncode != 0:
        print(f"measurement child failed (code {proc.returncode}): {proc.stderr.strip()[-2000:]}", file=sys.stderr)
        return 1
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["probes"] = {k: v.to_dict() for k, v in probes.items()}
    result["isa_env"] = env
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)
    return 0


def report(result: dict) -> None:
    for precision, probe in result["probes"].items():
        print(f"probe {precision}: ok={probe['ok']} isa_cap={probe['isa_cap']} - {probe['reason']}")
        for attempt in probe["attempts"]:
            print(f"    cap={attempt['isa_cap']}: {attempt['outcome']}: {attempt['detail']}")
    print(
        f"measured with env {result['isa_env'] or '(no ISA cap)'}; openvino {result['openvino']}, "
        f"nncf {result['nncf']}, {result['threads']} threads, {result['rounds']} rounds x {result['runs']} runs, "
        "variants interleaved\n"
    )
    print(f"{'model':24} {'variant':10} {'p50 ms':>8} {'p90 ms':>8} {'x FP32':>7}  kernels (Conv/FC: count)")
    for model, rows in result["models"].items():
        base = rows["fp32"]["p50_ms"]
        for variant in VARIANTS:
            row = rows[variant]
            kernels = ", ".join(f"{k}: {n}" for k, n in sorted(row["kernels"].items()))
            print(
                f"{model:24} {variant:10} {row['p50_ms']:8.2f} {row['p90_ms']:8.2f} {base / row['p50_ms']:6.2f}x"
                f"  {kernels}"
            )
        print(
            f"{'':24} speed-up vs FP32: BF16 {base / rows['bf16']['p50_ms']:.2f}x, INT8 (transformer-aware) "
            f"{base / rows['int8']['p50_ms']:.2f}x, INT8 naive {base / rows['int8-naive']['p50_ms']:.2f}x "
            f"(NNCF {rows['int8']['build_s']:.0f} s / {rows['int8-naive']['build_s']:.0f} s)\n"
        )


# ---- child: build and time -----------------------------------------------------------------------------------


def measure(rounds: int, runs: int) -> dict:
    import nncf
    import numpy as np
    import openvino as ov

    from vdeploy.quantize import Placement
    from vdeploy.quantize_openvino import quantize_openvino

    nncf.set_log_level(logging.ERROR)
    core = ov.Core()
    compiled, meta = {}, {}
    for name in MODELS:
        onnx_model = export(name)
        calib = sample_photo_crops(CALIB_CROPS)
        variants = {}
        variants["fp32"] = variants["bf16"] = to_ov(onnx_model)
        build_s = {"fp32": 0.0, "bf16": 0.0}
        for variant, placement in (("int8", Placement.transformer_aware()), ("int8-naive", Placement.naive())):
            start = time.perf_counter()
            variants[variant] = quantize_openvino(onnx_model, calib, placement)
            build_s[variant] = time.perf_counter() - start
        for variant in VARIANTS:
            config = {"INFERENCE_PRECISION_HINT": HINTS[variant], "PERFORMANCE_HINT": "LATENCY"}
            model = core.compile_model(variants[variant], "CPU", config)
            compiled[name, variant] = (model, model.create_infer_request())
            meta[name, variant] = {"kernels": kernels(model), "build_s": build_s[variant]}
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in compiled}
    for _, request in compiled.values():
        for _ in range(WARMUP):
            request.infer({0: x})
    keys = list(compiled)
    for r in range(rounds):
        for key in keys[r % len(keys) :] + keys[: r % len(keys)]:  # rotate the order each round
            request = compiled[key][1]
            for _ in range(runs):
                start = time.perf_counter()
                request.infer({0: x})
                times[key].append((time.perf_counter() - start) * 1e3)
    models: dict[str, dict] = {}
    for (name, variant), samples in times.items():
        samples.sort()
        models.setdefault(name, {})[variant] = {
            "p50_ms": statistics.median(samples),
            "p90_ms": samples[int(0.9 * (len(samples) - 1))],
            "runs": len(samples),
            **meta[name, variant],
        }
    return {
        "models": models,
        "openvino": ov.__version__.split("-")[0],
        "nncf": nncf.__version__,
        "threads": compiled[keys[0]][0].get_property("INFERENCE_NUM_THREADS"),
        "rounds": rounds,
        "runs": runs,
    }


def export(name: str):
    import onnx
    import torch

    from vdeploy.graph_passes.canonicalize import canonicalize
    from vdeploy.timm_compat import import_timm

    timm = import_timm()
    model = timm.create_model(name, pretrained=False).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.randn(1, 3, 224, 224),), buffer, dynamo=False, opset_version=17, input_names=["input"]
        )
    return canonicalize(onnx.load_from_string(buffer.getvalue())).model


def to_ov(onnx_model):
    import onnx
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(onnx_model, f"{tmp}/m.onnx")
        return ov.convert_model(f"{tmp}/m.onnx")


def sample_photo_crops(n: int):
    """n seeded random 224x224 crops (with flips) of sklearn's two sample photos, ImageNet-normalised."""
    import numpy as np
    from sklearn.datasets import load_sample_images

    from vdeploy.calibration import IMAGENET_MEAN, IMAGENET_STD, CalibrationData

    rng = np.random.default_rng(0)
    photos = load_sample_images().images
    crops = []
    for i in range(n):
        photo = photos[i % len(photos)]
        top, left = rng.integers(0, photo.shape[0] - 224), rng.integers(0, photo.shape[1] - 224)
        crop = photo[top : top + 224, left : left + 224].astype(np.float32) / 255.0
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crops.append(((crop - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1))
    return CalibrationData({"input": np.stack(crops).astype(np.float32)}, "sklearn sample photos (random crops)")


def kernels(compiled) -> dict[str, int]:
    found = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in ("Convolution", "FullyConnected", "MatMul"):
            found[f"{info['primitiveType'].astype(str)}"] += 1
    return dict(found)


if __name__ == "__main__":
    sys.exit(main())
