"""Running INT8 candidates for the in-build gate: the FP32 reference and each form's artifact on the judging samples.

onnx.ModelProto -> ONNX Runtime CPU (2 threads) · ov.Model or Q/DQ onnx built for OpenVINO -> OpenVINO CPU at f32
inference precision (INT8 kernels where the model has FakeQuantize), in a child process under an ISA cap where the
CPU probe asked for one (AMX SIGILL: ENVIRONMENT.md)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from vdeploy.backends.base import Int8Form
from vdeploy.calibration import CalibrationData


def reference_outputs(model, calib: CalibrationData) -> np.ndarray:
    """The FP32 ONNX model's first output on ONNX Runtime: what the in-build gate compares against."""
    return _ort_run(model, calib)


def default_evaluator(form: Int8Form, calib: CalibrationData, env: dict | None = None) -> Callable:
    if form is Int8Form.nncf_openvino:
        return (lambda model: _ov_child(model, calib, env)) if env else (lambda model: _ov_run(model, calib))
    return lambda model: _ort_run(model, calib)


def _ort_run(model, calib: CalibrationData) -> np.ndarray:
    import onnxruntime as ort

    from vdeploy.quantize import model_batch_size

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    batch = model_batch_size(model, dynamic_default=len(calib))
    return np.concatenate([session.run(None, feed)[0] for feed in calib.batches(batch)])


def _ov_run(ov_model, calib: CalibrationData) -> np.ndarray:
    """OpenVINO CPU at f32 inference precision (INT8 kernels where the model has FakeQuantize); the caller probed
    this CPU first (cpu_features.probe: AMX SIGILL)."""
    import openvino as ov

    if not isinstance(ov_model, ov.Model):  # a Q/DQ onnx.ModelProto built for OpenVINO
        from vdeploy.quantize_openvino import onnx_to_ov

        ov_model = onnx_to_ov(ov_model)
    compiled = ov.Core().compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    batch = compiled.inputs[0].get_partial_shape()[0]
    size = batch.get_length() if batch.is_static else len(calib)
    outs = []
    for feed in calib.batches(size):
        outs.append(compiled(list(feed.values()))[compiled.outputs[0]])
    return np.concatenate(outs)


def _ov_child(ov_model, calib: CalibrationData, env: dict) -> np.ndarray:
    """_ov_run in a child process under `env` (an ISA cap must be set before OpenVINO starts)."""
    import os
    import subprocess
    import sys
    import tempfile

    import openvino as ov

    if not isinstance(ov_model, ov.Model):
        from vdeploy.quantize_openvino import onnx_to_ov

        ov_model = onnx_to_ov(ov_model)
    with tempfile.TemporaryDirectory(prefix="vdeploy-int8-eval-") as tmp:
        ov.save_model(ov_model, str(Path(tmp) / "m.xml"), compress_to_fp16=False)
        np.savez(Path(tmp) / "in.npz", **calib.inputs)
        code = (
            "import sys, numpy as np, openvino as ov; from vdeploy.calibration import CalibrationData; "
            "from vdeploy.int8_eval import _ov_run; d = sys.argv[1]; a = np.load(d + '/in.npz'); "
            "np.save(d + '/out.npy', _ov_run(ov.Core().read_model(d + '/m.xml'), "
            "CalibrationData({k: a[k] for k in a.files}, 'eval')))"
        )
        done = subprocess.run(
            [sys.executable, "-c", code, tmp], env={**os.environ, **env}, capture_output=True, text=True, timeout=600
        )
        if done.returncode != 0:
            from vdeploy.quantize import QuantizeError

            raise QuantizeError(
                f"OpenVINO INT8 evaluation failed in a child process (exit {done.returncode}): "
                f"{done.stderr.strip()[-300:]}",
                "build with --int8-sensitive 0 to skip the gate search",
            )
        return np.load(Path(tmp) / "out.npy")
