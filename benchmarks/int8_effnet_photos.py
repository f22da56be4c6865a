"""EfficientNet-Lite0 (real ImageNet weights) INT8 top-1 agreement on the offline photos, and what bounds it (issue 14).

the 24 photos (sklearn + scikit-image) and 192 crops of them (8 each, never the calibration crops) -> FP32 on ONNX
Runtime -> against it: FP32 itself under +-1 grey-level uniform noise (the photos' own fragility), plain ONNX
Runtime quantize_static (QDQ, per-channel, MinMax), vdeploy's INT8 by default options, and vdeploy's INT8 with the
automatic float fallback driven to a 0.95 top-1 agreement gate -> top-1 agreement and worst logits cosine per set.
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


def _agreement(model, candidate, sets: dict) -> dict:
    from tests.test_precision import ort_run

    name = model.graph.input[0].name
    out = {}
    for label, inputs in sets.items():
        ref = ort_run(model, {name: inputs})
        got = candidate(inputs) if callable(candidate) else ort_run(candidate, {name: inputs})
        cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
        out[label] = {"top1_agreement": round(float(np.mean(ref.argmax(1) == got.argmax(1))), 3),
                      "worst_cosine": round(float(cos.min()), 4)}  # fmt: skip
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, quantize_static

    from tests.models import pretrained
    from tests.test_int8 import _effnet_case
    from tests.test_precision import ort_run
    from vdeploy.calibration import Preprocessing, load_calibration
    from vdeploy.int8 import Gate, Int8Form, Int8Options, quantize_int8
    from vdeploy.quantize import Placement
    from vdeploy.targets import Precision, load_catalog

    model, calib, photos, _, _ = _effnet_case()
    name = model.graph.input[0].name
    prep = Preprocessing(*pretrained.EFFNET_MEAN_STD, source="EfficientNet-Lite (TF)")
    with tempfile.TemporaryDirectory() as tmp:
        pretrained.save_photos(Path(tmp) / "crops", images=pretrained.photo_crops(per_photo=8, seed=1))
        crops = load_calibration(Path(tmp) / "crops", {name: (1, 3, 224, 224)}, preprocessing=prep).inputs[name]
    sets = {"24 photos": photos, "192 crops": crops}
    rows = {}
    rng = np.random.default_rng(0)
    noisy = lambda x: ort_run(model, {name: x + rng.uniform(-1, 1, x.shape).astype(np.float32) / 255 / 0.5})  # noqa: E731
    rows["FP32 under +-1 grey-level noise"] = _agreement(model, noisy, sets)

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
        rows["ONNX Runtime quantize_static (per-channel, MinMax)"] = _agreement(
            model, onnx.load(f"{tmp}/int8.onnx"), sets
        )
    tolerance = load_catalog().get("onnxruntime-cpu").spec.tolerances[Precision.int8]
    for label, gate in (
        ("vdeploy INT8, default options", Gate(tolerance.min_cosine, tolerance.max_rel_err)),
        ("vdeploy INT8, fallback to a 0.95 top-1 gate", Gate(tolerance.min_cosine, tolerance.max_rel_err, 0.95)),
    ):
        quantized, info = quantize_int8(model, calib, Int8Form.ort_qdq, Placement.transformer_aware(), gate,
                                        options=Int8Options())  # fmt: skip
        rows[f"{label} ({len(info['float_layers'])} float layers)"] = _agreement(model, quantized, sets)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print("| against FP32 | " + " | ".join(f"{s}: top-1 agreement, worst cosine" for s in sets) + " |")
    print("|---|" + "---|" * len(sets))
    for label, row in rows.items():
        cells = [f"{row[s]['top1_agreement']:.3f}, {row[s]['worst_cosine']:.4f}" for s in sets]
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
