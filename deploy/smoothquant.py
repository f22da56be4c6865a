"""SmoothQuant on ONNX: move activation outliers into the weights before Q/DQ quantization (ORT and TensorRT forms).

MatMul/Gemm(X, W const) whose X comes from a float island (LayerNorm, GELU, ...) and has outlier channels
  -> s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)   (per input channel j, from calibration statistics)
  -> Mul(X, 1/s) -> MatMul/Gemm(., diag(s) W)       (exact in float; the Mul stays float, its output is quantized)
Consumers of X that are not smoothable keep reading X. (Xiao et al., SmoothQuant, 2023; OpenVINO's form uses NNCF's
own SmoothQuant: quantize.py's smooth_quant_alphas.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vdeploy.activation_stats import activation_stats
from vdeploy.calibration import CalibrationData

DEFAULT_ALPHA = 0.75  # MiniLM held-out worst-sample cosine: 0.5 -> 0.982, 0.7 -> 0.996, 0.8 -> 0.995 (docs/int8.md)
MIN_OUTLIER_RATIO = 4.0  # smooth a tensor only when its largest channel is this many times its median channel
SMOOTH_PREFIX = "vdeploy_smooth/"


@dataclass(frozen=True)
class SmoothResult:
    model: object  # onnx.ModelProto
    mul_nodes: tuple[str, ...]  # the inserted Mul nodes: keep them float (their outputs are what gets quantized)
    smoothed: tuple[dict, ...]  # per activation: tensor, consumers, outlier ratio before / after
    alpha: float = DEFAULT_ALPHA

    def to_dict(self) -> dict:
        return {"alpha": self.alpha, "tensors": len(self.smoothed), "detail": list(self.smoothed)[:64]}


def smooth_quant(
    model,
    calib: CalibrationData,
    alpha: float = DEFAULT_ALPHA,
    min_ratio: float = MIN_OUTLIER_RATIO,
    stats: dict | None = None,
) -> SmoothResult:
    """A copy of `model` (onnx.ModelProto, nodes named) with SmoothQuant scales on the outlier-heavy inputs.
    `stats`: activation_stats already taken on these samples (reused where they cover the inputs)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {t.name: t for t in model.graph.initializer}
    groups: dict[str, list] = {}  # activation tensor -> [(node, weight array, input-channel axis)]
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        if node.input[0] in inits:
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if weight.ndim != 2 or weight.dtype != np.float32:
            continue
        trans_b = any(a.name == "transB" and a.i for a in node.attribute) if node.op_type == "Gemm" else False
        trans_a = any(a.name == "transA" and a.i for a in node.attribute) if node.op_type == "Gemm" else False
        if trans_a:
            continue
        groups.setdefault(node.input[0], []).append((node, weight, 1 if trans_b else 0))
    if not groups:
        return SmoothResult(model, (), (), alpha)
    if stats is None or any(name not in stats for name in groups):
        stats = activation_stats(model, calib, list(groups), converge=False).stats
    muls, smoothed = [], []
    for tensor, consumers in groups.items():
        x_max = stats[tensor].channel_absmax
        if x_max is None or x_max.shape[0] != consumers[0][1].shape[consumers[0][2]]:
            continue
        ratio = float(x_max.max() / max(np.median(x_max), 1e-12))
        if ratio < min_ratio:
            continue
        w_max = np.max([np.abs(w).max(axis=1 - axis) for _, w, axis in consumers], axis=0)
        scale = (np.maximum(x_max, 1e-5) ** alpha / np.maximum(w_max, 1e-5) ** (1 - alpha)).astype(np.float32)
        scale = np.clip(scale, 1e-4, 1e4)
        mul_name = f"{SMOOTH_PREFIX}{tensor}"
        inv = numpy_helper.from_array((1.0 / scale).astype(np.float32), f"{mul_name}/inv_scale")
        model.graph.initializer.append(inv)
        model.graph.node.append(onnx.helper.make_node("Mul", [tensor, inv.name], [f"{mul_name}/out"], name=mul_name))
        for node, weight, axis in consumers:
            scaled = weight * (scale[:, None] if axis == 0 else scale[None, :])
            new = numpy_helper.from_array(scaled.astype(np.float32), f"{node.input[1]}/smoothed/{node.name}")
            model.graph.initializer.append(new)
            node.input[0], node.input[1] = f"{mul_name}/out", new.name
        x_after = x_max / scale
        smoothed.append(
            {
                "tensor": tensor,
                "consumers": [n.name for n, _, _ in consumers],
                "outlier_ratio": round(ratio, 2),
                "outlier_ratio_after": round(float(x_after.max() / max(np.median(x_after), 1e-12)), 2),
            }
        )
        muls.append(mul_name)
    _drop_unused_initializers(model)
    return SmoothResult(_topological(model), tuple(muls), tuple(smoothed), alpha)


def _drop_unused_initializers(model) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def _topological(model):
    """Re-sort the nodes (the Muls were appended at the end) so every producer precedes its consumers."""
    produced_by = {o: i for i, n in enumerate(model.graph.node) for o in n.output}
    order, done, nodes = [], set(), list(model.graph.node)

    def visit(i):
        stack = [(i, False)]
        while stack:
            j, expanded = stack.pop()
            if j in done:
                continue
            if expanded:
                done.add(j)
                order.append(nodes[j])
                continue
            stack.append((j, True))
            stack.extend(
                (produced_by[x], False) for x in nodes[j].input if x in produced_by and produced_by[x] not in done
            )

    for i in range(len(nodes)):
        visit(i)
    del model.graph.node[:]
    model.graph.node.extend(order)
    return model
