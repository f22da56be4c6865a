"""Quantization-aware training hook: fake-quant in the target's INT8 form, fine-tuned by the user, kept by the build.

prepare(model, target, example_inputs) -> QATModule: every nn.Linear / nn.Conv2d reads a fake-quantized input
  (per-tensor, learned range: LSQ-style scale with a straight-through round) and fake-quantized weights (symmetric,
  per output channel, max-abs scale); LayerNorm/Softmax/GELU stay float (the float islands of the placement)
  -> the user's own training loop -> save(qat, "model.pt2", example_inputs): the float model with the fine-tuned
  weights, plus the learned ranges in the .pt2 (extra file vdeploy_qat.json, keyed by a layout-free weight fingerprint)
  -> vdeploy build model.pt2 --precision int8: learned_ranges() maps each range to the input tensor of the ONNX
  Conv/MatMul/Gemm whose weight matches; the Q/DQ forms use it as is (no re-calibration of that tensor).
Activations are asymmetric uint8 for the ort_qdq form, symmetric int8 for symmetric_qdq / nncf_openvino.
"""

from __future__ import annotations

import json

import numpy as np

EXTRA_FILE = "vdeploy_qat.json"


def fingerprint(weight: np.ndarray) -> list[float]:
    """Size + 33 quantiles of a weight's values: the same for W and W^T (ONNX MatMul stores Linear weights
    transposed) and, within float rounding, for a Conv whose BatchNorm the exporter folds in again."""
    values = np.asarray(weight, dtype=np.float64).ravel()
    return [float(values.size), *np.quantile(values, np.linspace(0, 1, 33)).tolist()]


def _same(a: list[float], b: list[float]) -> bool:
    return a[0] == b[0] and np.allclose(a[1:], b[1:], rtol=1e-3, atol=1e-6)


def _torch_parts():
    import torch
    from torch import nn

    class _RoundSTE(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return torch.round(x)

        @staticmethod
        def backward(ctx, grad):
            return grad

    def fake_quant(x, scale, zero, qmin, qmax):
        return (torch.clamp(_RoundSTE.apply(x / scale) + zero, qmin, qmax) - zero) * scale

    class FakeQuantLayer(nn.Module):
        """A Linear/Conv2d whose input and weight are fake-quantized; input range learned (init from min/max)."""

        def __init__(self, layer, symmetric: bool, weight_bits: int):
            super().__init__()
            self.layer, self.symmetric, self.weight_bits = layer, symmetric, weight_bits
            self.lo = nn.Parameter(torch.tensor(0.0))
            self.hi = nn.Parameter(torch.tensor(1.0))
            self.register_buffer("initialised", torch.tensor(False))

        def quantized_weight(self):
            w = self.layer.weight
            qmax = 2 ** (self.weight_bits - 1) - 1
            scale = w.detach().abs().reshape(w.shape[0], -1).amax(1).clamp_min(1e-8) / qmax
            return fake_quant(w, scale.reshape(-1, *([1] * (w.ndim - 1))), 0.0, -qmax, qmax)

        def forward(self, x):
            if not bool(self.initialised):
                with torch.no_grad():
                    self.lo.fill_(min(float(x.min()), 0.0))
                    self.hi.fill_(max(float(x.max()), 1e-6))
                    self.initialised.fill_(True)
            x = self._quant_input(x)
            return (
                self.layer._conv_forward(x, self.quantized_weight(), self.layer.bias)
                if isinstance(self.layer, nn.Conv2d)
                else nn.functional.linear(x, self.quantized_weight(), self.layer.bias)
            )

        def _quant_input(self, x):
            if self.symmetric:
                bound = torch.maximum(self.hi.abs(), self.lo.abs()).clamp_min(1e-8)
                return fake_quant(x, bound / 127.0, 0.0, -127, 127)
            lo, hi = torch.clamp(self.lo, max=0.0), torch.clamp(self.hi, min=1e-8)
            scale = (hi - lo) / 255.0
            zero = torch.round(-lo / scale).detach()
            return fake_quant(x, scale, zero, 0, 255)

        def learned_range(self) -> tuple[float, float]:
            if self.symmetric:
                bound = max(abs(float(self.lo.detach())), abs(float(self.hi.detach())))
                return -bound, bound
            return min(float(self.lo.detach()), 0.0), max(float(self.hi.detach()), 1e-8)

    return torch, nn, FakeQuantLayer


def prepare(model, target=None, example_inputs=(), *, weight_bits: int = 8, form=None):
    """A copy of `model` (nn.Module) with fake-quant matching the target's INT8 form; run example_inputs once
    so every range starts at the observed min/max (what PTQ would calibrate). `target`: a vdeploy Target, a target
    name (`vdeploy targets`) or a backend name; `form`: an int8.Int8Form to force one."""
    import copy

    from vdeploy.backends import backend_names
    from vdeploy.int8 import Int8Form, form_for_backend

    torch, nn, FakeQuantLayer = _torch_parts()
    if form is None:
        backend = getattr(target, "backend", target) or "onnxruntime"
        if isinstance(backend, str) and backend not in backend_names():
            from vdeploy.targets import load_catalog

            backend = load_catalog().get(backend).backend  # a target name: its backend decides
        form = form_for_backend(str(backend))
    symmetric = Int8Form(form) is not Int8Form.ort_qdq
    qat = copy.deepcopy(model)

    def swap(module):
        for name, child in module.named_children():
            if isinstance(child, (nn.Linear, nn.Conv2d)):
                setattr(module, name, FakeQuantLayer(child, symmetric, weight_bits))
            else:
                swap(child)

    _fold_batchnorms(qat.eval(), nn)
    swap(qat)
    if example_inputs is not None and len(example_inputs):
        with torch.no_grad():
            qat.eval()(*example_inputs)
    qat.vdeploy_qat_form = Int8Form(form).value
    return qat


def _fold_batchnorms(module, nn) -> None:
    """Fold each BatchNorm2d into the Conv2d defined right before it (the deployed graph has them folded, so the
    fake-quant must see the folded weight; BN statistics are frozen during QAT)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    children = list(module.named_children())
    for (name, child), (next_name, after) in zip(children, children[1:]):
        if isinstance(child, nn.Conv2d) and isinstance(after, nn.BatchNorm2d):
            setattr(module, name, fuse_conv_bn_eval(child, after))
            setattr(module, next_name, nn.Identity())
    for _, child in module.named_children():
        _fold_batchnorms(child, nn)


def fake_quant_layers(qat) -> list:
    _, _, FakeQuantLayer = _torch_parts()
    return [m for m in qat.modules() if type(m).__name__ == FakeQuantLayer.__name__]


def to_float(qat):
    """The plain float module with the fine-tuned weights (fake-quant removed), and the ranges record."""
    import copy

    model = copy.deepcopy(qat)
    ranges = []

    def unswap(module):
        for name, child in module.named_children():
            if type(child).__name__ == "FakeQuantLayer":
                lo, hi = child.learned_range()
                ranges.append(
                    {
                        "weight": fingerprint(child.layer.weight.detach().numpy()),
                        "rmin": lo,
                        "rmax": hi,
                        "weight_bits": child.weight_bits,
                    }
                )
                setattr(module, name, child.layer)
            else:
                unswap(child)

    unswap(model)
    return model.eval(), {"form": getattr(qat, "vdeploy_qat_form", None), "ranges": ranges}


def save(qat, path, example_inputs) -> None:
    """Write the fine-tuned model as a torch.export .pt2 with the learned ranges inside (for `vdeploy build`)."""
    import torch

    model, record = to_float(qat)
    program = torch.export.export(model, tuple(example_inputs))
    torch.export.save(program, str(path), extra_files={EXTRA_FILE: json.dumps(record)})


def read_record(model_path) -> dict | None:
    """The QAT record inside a .pt2 (None for any other file or a .pt2 without one)."""
    import zipfile

    try:
        with zipfile.ZipFile(model_path) as archive:
            member = next((n for n in archive.namelist() if n.endswith(f"extra/{EXTRA_FILE}")), None)
            return json.loads(archive.read(member)) if member else None
    except (OSError, zipfile.BadZipFile, ValueError):
        return None


def learned_ranges(onnx_model, record: dict) -> dict[str, tuple[float, float]]:
    """ONNX tensor name -> (rmin, rmax): the activation input of each Conv/MatMul/Gemm whose weight matches."""
    from onnx import numpy_helper

    recorded = record.get("ranges", [])
    inits = {t.name: t for t in onnx_model.graph.initializer}
    ranges = {}
    for node in onnx_model.graph.node:
        if node.op_type in ("Conv", "MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in inits:
            key = fingerprint(numpy_helper.to_array(inits[node.input[1]]))
            match = next((r for r in recorded if _same(r["weight"], key)), None)
            if match is not None:
                ranges[node.input[0]] = (match["rmin"], match["rmax"])
    return ranges
