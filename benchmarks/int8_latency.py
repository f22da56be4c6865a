"""INT8 vs FP32 per model and CPU target, one interleaved run; the INT8 gate figures and fallback cost beside it.

models (MiniLM real weights on real sentences; EfficientNet-Lite0 real weights, deit_tiny / swin_tiny random init:
calibrated on 48 crops of the real photos) x targets (onnxruntime-cpu, x86-cpu)
  -> vdeploy build --precision fp32 and int8 (default flags) -> every bundle of the model opened with vdeploy's own
     backend session in ONE child process (under the INT8 ISA cap the CPU probe asks for)
  -> p50 of interleaved runs (fp32, int8, fp32, int8, ... per target) -> table: fp32 ms, int8 ms, ratio,
     cosine / worst sample, float layers kept and their measured cost, build seconds; image models with real weights:
     top-1 agreement of INT8 with FP32 on the 24 whole photos (never calibrated on)
Run: .venv/bin/python benchmarks/int8_latency.py [--models minilm,effnet,deit_tiny,swin_tiny] [--iters 50]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TIMM = {"deit_tiny": "deit_tiny_patch16_224", "swin_tiny": "swin_tiny_patch4_window7_224"}


def _model(name: str, tmp: Path) -> tuple[Path, Path, dict]:
    """(.pt2 path, calibration path, extra build options) for one benchmark model."""
    from tests.models import pretrained

    extra: dict = {}
    if name == "minilm":
        x = pretrained.token_embeddings(pretrained.sentences())
        np.save(tmp / "minilm.npy", x[:64])
        module, example, calib = pretrained.minilm_encoder(), torch.from_numpy(x[:1]), tmp / "minilm.npy"
    else:
        calib, example = tmp / "crops", torch.zeros(1, 3, 224, 224)
        if not calib.exists():
            pretrained.save_photos(calib, images=pretrained.photo_crops(per_photo=2))
            pretrained.save_photos(tmp / "photos")
        if name == "effnet":
            module = pretrained.efficientnet_lite0()
            extra = {"mean": pretrained.EFFNET_MEAN_STD[0], "std": pretrained.EFFNET_MEAN_STD[1]}
        else:
            from vdeploy.timm_compat import import_timm

            module = import_timm().create_model(TIMM[name]).eval()
    path = tmp / f"{name}.pt2"
    torch.export.save(torch.export.export(module, (example,)), path)
    return path, calib, extra


def _photos(tmp: Path, name: str, extra: dict) -> Path | None:
    """The 24 whole photos as model inputs (.npz), for top-1 agreement (real weights only)."""
    if name != "effnet":
        return None
    from vdeploy.calibration import Preprocessing, load_calibration

    prep = Preprocessing(extra["mean"], extra["std"])
    data = load_calibration(tmp / "photos", {"x": (1, 3, 224, 224)}, preprocessing=prep).inputs["x"]
    np.savez(tmp / "photos.npz", x=data)
    return tmp / "photos.npz"


def time_bundles(bundles: list[str], iters: int, photos: str | None) -> dict:
    """(child) p50 ms of every bundle, runs interleaved; top-1 on the photos where given."""
    from vdeploy.backends import backend_class
    from vdeploy.backends.base import Artifact

    sessions = {}
    for bundle in bundles:
        manifest = json.loads((Path(bundle) / "manifest.json").read_text())
        artifact = Artifact.from_dict(manifest["artifact"])
        sessions[bundle] = backend_class(manifest["backend"])().open(artifact, Path(bundle))
    feeds = {}
    for bundle, session in sessions.items():
        with np.load(Path(bundle) / "reference_io.npz") as ref:
            x = next(ref[k] for k in ref.files if k.startswith("input:"))[0]  # samples stacked: [N, *input shape]
        feeds[bundle] = {session.input_names[0]: x}
    for bundle, session in sessions.items():
        for _ in range(3):
            session.run(feeds[bundle])
    times: dict[str, list[float]] = {b: [] for b in sessions}
    by_runtime: dict[str, list[str]] = {}
    for bundle in sessions:
        by_runtime.setdefault(json.loads((Path(bundle) / "manifest.json").read_text())["backend"], []).append(bundle)
    for group in by_runtime.values():  # fp32 and int8 interleaved per runtime (one runtime's spinning threads
        for _ in range(iters):  # must not steal the other's time)
            for bundle in group:
                start = time.perf_counter()
                sessions[bundle].run(feeds[bundle])
                times[bundle].append((time.perf_counter() - start) * 1000)
    out = {b: {"p50_ms": float(np.median(t))} for b, t in times.items()}
    if photos:
        x = np.load(photos)["x"]
        for bundle, session in sessions.items():
            logits = np.concatenate([session.run({session.input_names[0]: x[i : i + 1]})[0] for i in range(len(x))])
            out[bundle]["top1"] = logits.argmax(1).tolist()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="minilm,effnet,deit_tiny,swin_tiny")
    parser.add_argument("--targets", default="onnxruntime-cpu,x86-cpu")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--time", help=argparse.SUPPRESS)  # child mode: JSON list of bundles
    parser.add_argument("--photos", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.time:
        print(json.dumps(time_bundles(json.loads(args.time), args.iters, args.photos)))
        return
    import os

    from vdeploy.cpu_features import probe_int8
    from vdeploy.pipeline import BuildRequest, build

    support = probe_int8()
    env = {**os.environ, **(support.env() if support.ok else {})}
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for name in args.models.split(","):
            path, calib, extra = _model(name, tmp)
            built = {}
            for target in args.targets.split(","):
                for precision in ("fp32", "int8"):
                    start = time.perf_counter()
                    request = BuildRequest(
                        model=str(path),
                        targets=(target,),
                        out_dir=tmp / precision,
                        precision=precision,
                        calib=calib,
                        iters=3,
                        **extra,
                    )
                    (outcome,) = build(request)
                    built[(target, precision)] = (outcome.result, time.perf_counter() - start)
            photos = _photos(tmp, name, extra)
            bundles = [str(r.bundle) for r, _ in built.values()]
            cmd = [sys.executable, __file__, "--time", json.dumps(bundles), "--iters", str(args.iters)]
            cmd += ["--photos", str(photos)] if photos else []
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
            if done.returncode != 0:
                raise SystemExit(f"timing child failed: {done.stderr[-2000:]}")
            timed = json.loads(done.stdout.strip().splitlines()[-1])
            for target in args.targets.split(","):
                (fp32, _), (int8, seconds) = built[(target, "fp32")], built[(target, "int8")]
                t32, t8 = timed[str(fp32.bundle)], timed[str(int8.bundle)]
                info, numerics = int8.manifest["precision_info"], int8.manifest["numerics"]
                fallback = info.get("fallback", {})
                agree = None
                if "top1" in t8:
                    agree = float(np.mean(np.array(t8["top1"]) == np.array(t32["top1"])))
                rows.append(
                    {
                        "model": name,
                        "target": target,
                        "fp32_ms": t32["p50_ms"],
                        "int8_ms": t8["p50_ms"],
                        "ratio": t8["p50_ms"] / t32["p50_ms"],
                        "form": info.get("form"),
                        "cosine": numerics["cosine"],
                        "worst": numerics["worst_sample_cosine"],
                        "photos_top1": agree,
                        "float_layers": info.get("float_layers", []),
                        "fallback_ms": fallback.get("latency", {}).get("ms"),
                        "verdict": int8.manifest["verdict"],
                        "violations": [v["budget"] for v in int8.manifest["violations"]],
                        "build_s": seconds,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    print(f"\none interleaved run per model, p50 of {args.iters} (ms); timing child env: {support.env() or 'default'}")
    print("model      target           fp32    int8  ratio  cosine  worst   top1(photos) float verdict build_s  form")
    for r in rows:
        top1 = "-" if r["photos_top1"] is None else f"{r['photos_top1']:.3f}"
        print(
            f"{r['model']:<10} {r['target']:<15} {r['fp32_ms']:6.2f} {r['int8_ms']:7.2f}  {r['ratio']:5.2f}  "
            f"{r['cosine']:.4f}  {r['worst']:.4f}  {top1:>12} {len(r['float_layers']):5d} {r['verdict']:<7} "
            f"{r['build_s']:6.0f}   {r['form']}"
        )
        if r["float_layers"]:
            print(f"           float: {', '.join(r['float_layers'])}; all-INT8 / chosen / FP32 ms: {r['fallback_ms']}")
        if r["violations"]:
            print(f"           verdict {r['verdict']}: {', '.join(r['violations'])}")


if __name__ == "__main__":
    main()
