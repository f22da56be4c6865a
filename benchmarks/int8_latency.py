"""INT8 vs FP32 latency per model on x86-cpu (OpenVINO), one interleaved run; the INT8 gate figures beside it.

models (MiniLM real weights, EfficientNet-Lite0 real weights, deit_tiny / swin_tiny random init with real-photo
calibration) -> vdeploy build --precision fp32 and int8 (default flags) -> both artifacts loaded in this process
-> p50 of interleaved runs -> table: fp32 ms, int8 ms, ratio, cosine, worst-sample cosine, float layers kept + cost
Run: .venv/bin/python benchmarks/int8_latency.py [--models minilm,effnet,deit_tiny,swin_tiny] [--iters 50]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _model(name: str, tmp: Path):
    """(.pt2 path, calibration path) for one benchmark model."""
    from tests.models import pretrained

    if name == "minilm":
        x = pretrained.token_embeddings(pretrained.sentences())
        np.save(tmp / "minilm.npy", x[:64])
        module, example, calib = pretrained.minilm_encoder(), torch.from_numpy(x[:1]), tmp / "minilm.npy"
    else:
        pretrained.save_photos(tmp / "photos")
        calib, example = tmp / "photos", torch.zeros(1, 3, 224, 224)
        if name == "effnet":
            module = pretrained.efficientnet_lite0()
        else:
            from vdeploy.timm_compat import import_timm

            module = (
                import_timm()
                .create_model({"deit_tiny": "deit_tiny_patch16_224", "swin_tiny": "swin_tiny_patch4_window7_224"}[name])
                .eval()
            )
    path = tmp / f"{name}.pt2"
    torch.export.save(torch.export.export(module, (example,)), path)
    return path, calib


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="minilm,effnet,deit_tiny,swin_tiny")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--target", default="x86-cpu")
    args = parser.parse_args()
    import openvino as ov

    from vdeploy.pipeline import BuildRequest, build

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in args.models.split(","):
            path, calib = _model(name, tmp)
            built = {}
            for precision in ("fp32", "int8"):
                start = time.perf_counter()
                (outcome,) = build(
                    BuildRequest(
                        model=str(path),
                        targets=(args.target,),
                        out_dir=tmp / precision,
                        precision=precision,
                        calib=calib,
                        iters=3,
                    )
                )
                built[precision] = (outcome.result, time.perf_counter() - start)
            core = ov.Core()
            compiled = {
                p: core.compile_model(str(r.bundle / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
                for p, (r, _) in built.items()
            }
            feed = np.load(built["int8"][0].bundle / "reference_io.npz")
            x = next(feed[k] for k in feed.files if k.startswith("input:"))[:1]
            times = {p: [] for p in compiled}
            for _ in range(args.iters):  # interleaved: fp32, int8, fp32, int8, ...
                for p, c in compiled.items():
                    t = time.perf_counter()
                    c([x])
                    times[p].append((time.perf_counter() - t) * 1000)
            fp32, int8 = (float(np.median(times[p])) for p in ("fp32", "int8"))
            m = built["int8"][0].manifest
            info = m["precision_info"]
            fallback = info.get("fallback", {})
            rows.append(
                (
                    name,
                    fp32,
                    int8,
                    int8 / fp32,
                    m["numerics"]["cosine"],
                    m["numerics"]["worst_sample_cosine"],
                    m["numerics"].get("top1_agreement"),
                    len(info.get("float_layers", [])),
                    fallback.get("latency", {}).get("float_layers_cost_ms"),
                    m["verdict"],
                    built["int8"][1],
                )
            )
            print(rows[-1], flush=True)
    print(f"\n{args.target}, one interleaved run, p50 of {args.iters} (ms)")
    print("model      fp32    int8   ratio  cosine   worst    top1   float  cost_ms verdict build_s")
    for r in rows:
        print(
            f"{r[0]:<10} {r[1]:6.2f} {r[2]:6.2f}  {r[3]:5.2f}  {r[4]:.4f}  {r[5]:.4f}  "
            f"{r[6] if r[6] is None else round(r[6], 3)}"
            f"  {r[7]:5d}  {r[8]}  {r[9]}  {r[10]:.0f}"
        )


if __name__ == "__main__":
    main()
