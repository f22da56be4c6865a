"""Which ONNX Runtime INT8 form is fastest for a transformer encoder on this CPU, and what each costs in fidelity.

all-MiniLM-L6-v2 (real weights) -> vdeploy build --precision fp32 (onnxruntime-cpu: the legal graph, onnxsim's fused
com.microsoft Attention inside) -> INT8 variants of that graph:
  vdeploy default (quantize_int8: fused Attention split, SmoothQuant, QDQ U8S8 per-channel, float islands)
  the same with the Attention left fused (QKV projection float) · QDQ S8S8 · QDQ per-tensor weights
  · QOperator U8S8 · dynamic (DynamicQuantizeLinear + MatMulInteger) on Gemm/MatMul, with and without SmoothQuant
-> all sessions in this process, p50 of interleaved runs (2 threads) + worst-sample cosine vs FP32 on 28 sentences
Run: .venv/bin/python benchmarks/int8_ort_forms.py [--iters 100]
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


def _fp32_graph(tmp: Path):
    import onnx

    from tests.models.pretrained import minilm_encoder, sentences, token_embeddings
    from vdeploy.pipeline import BuildRequest, build

    x = token_embeddings(sentences())
    np.save(tmp / "calib.npy", x[:64])
    torch.export.save(torch.export.export(minilm_encoder(), (torch.from_numpy(x[:1]),)), tmp / "minilm.pt2")
    request = BuildRequest(model=str(tmp / "minilm.pt2"), targets=("onnxruntime-cpu",), out_dir=tmp / "fp32", iters=2)
    (outcome,) = build(request)
    return onnx.load(outcome.result.bundle / "model.onnx"), x


def _variants(fp32, x):
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    from vdeploy.attention_split import split_fused_attention
    from vdeploy.calibration import CalibrationData
    from vdeploy.int8 import Gate, Int8Form, Int8Options, quantize_int8
    from vdeploy.quantize import Placement, _Reader, name_nodes
    from vdeploy.smoothquant import smooth_quant

    name = fp32.graph.input[0].name
    calib = CalibrationData({name: x[:64]}, "64 sentences")
    gate = Gate(0.99, 0.25)

    def ours(**kw):
        return quantize_int8(fp32, calib, Int8Form.ort_qdq, Placement.transformer_aware(), gate, **kw)[0]

    def static(fmt, act, per_channel=True, model=fp32):
        with tempfile.TemporaryDirectory() as d:
            extra = {"ActivationSymmetric": act == QuantType.QInt8, "WeightSymmetric": True}
            quantize_static(
                name_nodes(model), f"{d}/q.onnx", _Reader(calib, 1), quant_format=fmt, per_channel=per_channel,
                activation_type=act, weight_type=QuantType.QInt8, extra_options=extra,
            )  # fmt: skip
            return onnx.load(f"{d}/q.onnx")

    def dynamic(model):
        with tempfile.TemporaryDirectory() as d:
            onnx.save(model, f"{d}/f.onnx")
            quantize_dynamic(f"{d}/f.onnx", f"{d}/q.onnx", weight_type=QuantType.QInt8, per_channel=True)
            return onnx.load(f"{d}/q.onnx")

    split = split_fused_attention(name_nodes(fp32))
    smoothed = smooth_quant(split, calib).model
    return {
        "fp32": fp32,
        "vdeploy default (QDQ U8S8, QKV split)": ours(),
        "vdeploy, Attention fused (QKV float)": ours(options=Int8Options(split_attention=False)),
        "QDQ U8S8 per-channel, all ops, split": static(QuantFormat.QDQ, QuantType.QUInt8, model=split),
        "QDQ S8S8 per-channel, all ops, split": static(QuantFormat.QDQ, QuantType.QInt8, model=split),
        "QDQ U8S8 per-tensor, all ops, split": static(QuantFormat.QDQ, QuantType.QUInt8, False, model=split),
        "QOperator U8S8 per-channel, split": static(QuantFormat.QOperator, QuantType.QUInt8, model=split),
        "dynamic MatMulInteger, split": dynamic(split),
        "dynamic MatMulInteger, split + SmoothQuant": dynamic(smoothed),
    }


def main() -> None:
    import onnxruntime as ort

    parser = argparse.ArgumentParser()
    parser.add_argument("--iters", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fp32, x = _fp32_graph(Path(tmp))
        variants = _variants(fp32, x)
    name, held = fp32.graph.input[0].name, x[64:]
    sessions = {}
    for key, model in variants.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        sessions[key] = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    outputs = {
        k: np.concatenate([s.run(None, {name: held[i : i + 1]})[0] for i in range(len(held))])
        for k, s in sessions.items()
    }
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(args.iters):
        for key, session in sessions.items():
            start = time.perf_counter()
            session.run(None, {name: held[:1]})
            times[key].append((time.perf_counter() - start) * 1000)
    ref, base = outputs["fp32"], float(np.median(times["fp32"]))
    print(
        f"\nall-MiniLM-L6-v2, onnxruntime-cpu, 2 threads, p50 of {args.iters} interleaved runs, {len(held)} sentences"
    )
    print(f"{'form':44s} {'p50 ms':>8s} {'ratio':>6s} {'worst cos':>9s}  int8 kernels")
    for key, out in outputs.items():
        cos = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
        ops = sorted({n.op_type for n in variants[key].graph.node} & INT8_OPS)
        p50 = float(np.median(times[key]))
        print(f"{key:44s} {p50:8.2f} {p50 / base:6.2f} {cos.min():9.4f}  {', '.join(ops) or '-'}")


INT8_OPS = frozenset(
    {"QuantizeLinear", "QLinearMatMul", "MatMulInteger", "DynamicQuantizeLinear", "QAttention", "QGemm", "QLinearAdd"}
)

if __name__ == "__main__":
    main()
