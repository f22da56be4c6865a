"""EfficientNet-Lite0 (real ImageNet weights) INT8 top-1 agreement on the offline photos, and what bounds it (issue 14).

the 24 photos (sklearn + scikit-image) and 192 crops of them (8 each, never the calibration crops) -> FP32 on ONNX
Runtime; "resolvable" inputs: FP32's top-1 survives 5 draws of +-1 grey-level noise -> against FP32: FP32 itself
under +-1 grey-level uniform noise (the photos' own fragility), plain ONNX Runtime quantize_static (QDQ,
per-channel, MinMax), vdeploy's INT8 by default options, and vdeploy's INT8 with the automatic float fallback driven
to a 0.95 top-1 agreement gate -> per set: top-1 agreement on all inputs and on the resolvable ones, and the worst
logits cosine.
Calibration: 48 other crops (tests/test_int8.py's case). Latency is not measured here (benchmarks/int8_latency.py).

Run: .venv/bin/python benchmarks/int8_effnet_photos.py [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _agreement(model, candidate, sets: dict, stable: dict) -> dict:
    """Per set: top-1 agreement with FP32 on all inputs and on the resolvable ones, and the worst logits cosine."""
    from tests.test_precision import ort_run

    name = model.graph.input[0].name
    out = {}
    for label, inputs in sets.items():
        ref = ort_run(model, {name: inputs})
        got = candidate(inputs) if callable(candidate) else ort_run(candidate, {name: inputs})
        cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
        same = ref.argmax(1) == got.argmax(1)
        out[label] = {"top1_agreement": round(float(same.mean()), 3),
                      "top1_agreement_resolvable": round(float(same[stable[label]].mean()), 3),
                      "worst_cosine": round(float(cos.min()), 4)}  # fmt: skip
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, quantize_static

    from tests.test_int8 import _effnet_case, effnet_crops, noisy_fp32, resolvable
    from vdeploy.int8 import Gate, Int8Form, Int8Options, quantize_int8
    from vdeploy.quantize import Placement
    from vdeploy.targets import Precision, load_catalog

    model, calib, photos, _, _ = _effnet_case()
    name = model.graph.input[0].name
    crops, crops_stable = effnet_crops()
    sets = {"24 photos": photos, "192 crops": crops}
    stable = {"24 photos": resolvable(model, photos), "192 crops": crops_stable}
    rows = {"FP32 under +-1 grey-level noise": _agreement(model, lambda x: noisy_fp32(model, x, 0), sets, stable)}

    calib_inputs = calib.inputs[name]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.samples = iter([{name: calib_inputs[i : i + 1]} for i in range(len(calib_inputs))])

        def get_next(self):
            return next(self.samples, None)

    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(model, f"{tmp}/fp32.onnx")
        quantize_static(f"{tmp}/fp32.onnx", f"{tmp}/int8.onnx", Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, calibrate_method=CalibrationMethod.MinMax)  # fmt: skip
        plain = onnx.load(f"{tmp}/int8.onnx")
    rows["ONNX Runtime quantize_static (per-channel, MinMax)"] = _agreement(model, plain, sets, stable)
    tolerance = load_catalog().get("onnxruntime-cpu").spec.tolerances[Precision.int8]
    for label, gate in (
        ("vdeploy INT8, default options", Gate(tolerance.min_cosine, tolerance.max_rel_err)),
        ("vdeploy INT8, fallback to a 0.95 top-1 gate", Gate(tolerance.min_cosine, tolerance.max_rel_err, 0.95)),
    ):
        quantized, info = quantize_int8(model, calib, Int8Form.ort_qdq, Placement.transformer_aware(), gate,
                                        options=Int8Options())  # fmt: skip
        rows[f"{label} ({len(info['float_layers'])} float layers)"] = _agreement(model, quantized, sets, stable)
    resolvable = {label: int(mask.sum()) for label, mask in stable.items()}
    if args.json:
        print(json.dumps({"resolvable": resolvable, "rows": rows}, indent=2))
        return 0
    print("| against FP32 | " + " | ".join(f"{s}: top-1 agreement (on the {resolvable[s]} resolvable), worst cosine"
                                         for s in sets) + " |")  # fmt: skip
    print("|---|" + "---|" * len(sets))
    for label, row in rows.items():
        cells = [f"{r['top1_agreement']:.3f} ({r['top1_agreement_resolvable']:.3f}), {r['worst_cosine']:.4f}"
                 for r in (row[s] for s in sets)]  # fmt: skip
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
