"""Helpers for the head-pruning tests: exports as the pipeline makes them, ONNX Runtime runs, and the masked PyTorch
reference (written here, independently of the pass: a removed head's columns of the output projection zeroed).

module -> export (dynamo opset 18 / legacy opset 17) -> canonicalize -> onnx.ModelProto; run(model, x) -> output 0
masked_reference(module, keep, x): deep copy, proj.weight[:, head h's channels] = 0 for every removed h -> output
"""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from vdeploy.export import export_onnx
from vdeploy.graph_passes.canonicalize import canonicalize
from vdeploy.load import InputSpec, LoadedModel, ModelFormat

EXPORTS = {"dynamo": 18, "legacy": 17}
EXACT_REL = 1e-5  # max |pruned - masked reference| / max |reference|


def exported(module: nn.Module, shape: tuple[int, ...], exporter: str, *, simplify: bool = True):
    """The graph the pipeline would legalize (canonicalized), or the exporter's own with shapes inferred."""
    import onnx

    fmt = ModelFormat.torchscript if exporter == "legacy" else ModelFormat.timm  # the pipeline's exporter choice
    loaded = LoadedModel("test", "test", fmt, None, (InputSpec("input", shape),), module=module)
    result = export_onnx(loaded, (torch.randn(shape),), EXPORTS[exporter])
    assert result.exporter == exporter, result.notes
    return canonicalize(result.model).model if simplify else onnx.shape_inference.infer_shapes(result.model)


def run(model, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def attention_layers(module: nn.Module) -> list[nn.Module]:
    """Attention modules in module order (= execution order for these sequential models)."""
    return [m for m in module.modules() if hasattr(m, "proj") and (hasattr(m, "qkv") or hasattr(m, "q"))]


def head_count(layer: nn.Module) -> int:
    return getattr(layer, "num_heads", None) or layer.heads


def masked_reference(module: nn.Module, keep: dict[str, list[int]], x: np.ndarray) -> np.ndarray:
    """The module's output with every head not kept contributing nothing: its output-projection columns zeroed."""
    masked = copy.deepcopy(module)
    layers = attention_layers(masked)
    with torch.no_grad():
        for block, kept in keep.items():
            layer = layers[int(block.removeprefix("attn"))]
            width = layer.proj.in_features // head_count(layer)
            for head in set(range(head_count(layer))) - set(kept):
                layer.proj.weight[:, head * width : (head + 1) * width] = 0.0
        return masked(torch.from_numpy(x)).numpy()


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


class VariantAttention(nn.Module):
    """Attention written three more ways: separate q/k/v Linears ("separate"), one qkv Linear chunked along channels
    ("chunk": Split or Slice on the channel axis), and "leak": chunked, with v also added to the block's output
    (its projection output is read outside the heads' path, so the block must be refused)."""

    def __init__(self, dim: int = 48, heads: int = 3, mode: str = "separate") -> None:
        super().__init__()
        self.heads, self.mode = heads, mode
        if mode == "separate":
            self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = (self.q(x), self.k(x), self.v(x)) if self.mode == "separate" else self.qkv(x).chunk(3, dim=-1)
        qh, kh, vh = (t.reshape(B, N, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = self.proj(F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(B, N, C))
        return y + v if self.mode == "leak" else y


class VariantNet(nn.Module):
    """embed -> two residual attention blocks (the second always 'chunk') -> mean -> Linear; input [1, 10, 8]."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 48)
        self.blocks = nn.ModuleList([VariantAttention(mode=mode), VariantAttention(mode="chunk")])
        self.head = nn.Linear(48, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x.mean(1))


def variant_net(mode: str, seed: int = 0) -> VariantNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VariantNet(mode).eval()
