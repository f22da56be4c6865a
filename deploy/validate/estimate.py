"""Analytic latency/power: FLOPs and bytes per op from the legalized ONNX, a roofline per op, a linear power model.

ONNX -> count_cost -> Cost(flops, bytes, per_op) -> estimate(cost, Hardware, precision) -> Estimate(ms, W, mJ)
measured ms + Cost + Hardware -> calibrate -> Calibration(efficiency that reproduces it, error of the catalogue's)

Counting model (hand-checkable; tests/test_estimate.py does it for MatMul, Conv and LayerNormalization):
- A multiply-add is 2 FLOPs. MatMul: 2·numel(out)·K (batch dims included). Gemm: 2·M·N·K (+M·N for C).
  Conv: 2·numel(out)·(Cin/groups)·prod(kernel) (+numel(out) for bias). Attention: 2·Sk·(numel(Q)+numel(Y))
  + scores·(1 scale + softmax). Pooling: numel(out)·prod(kernel); Global*/Reduce*: numel(in).
- Normalizations per element: LayerNorm 5 (mean sum, centre, square, variance sum, scale by 1/std) + 1 per affine
  input, plus 4 per normalized row (two divides, +eps, rsqrt); RMSNorm 3 per element + 3 per row; BatchNorm 2.
  Softmax per element: max, subtract, exp, sum, divide = 4 + exp cost.
- Elementwise ops: 1 FLOP per output element, except the nominal costs in UNARY_FLOPS (a transcendental as a
  few FLOPs; in deit_tiny they weigh < 1 % of the total, so their exact value hardly matters).
- Bytes (DRAM traffic): each op reads its activation inputs and writes its outputs once; a weight (initializer or
  Constant) is read once, by its first consumer. View ops (Reshape, Squeeze, ...) move nothing. Element sizes follow
  the graph's dtypes (an FP16 or INT8 graph counts its own bytes). By default no cache is assumed: an upper bound
  that a CPU with MBs of cache beats; `on_chip_bytes` keeps activations up to that size off the DRAM bill.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import onnx

from vdeploy.errors import TargetError
from vdeploy.targets import Hardware, Precision
from vdeploy.validate.power import PowerSource

EXP = 4  # nominal FLOPs of one transcendental (a short polynomial after range reduction)
UNARY_FLOPS = {
    "Exp": EXP,
    "Log": EXP,
    "Erf": EXP,
    "Tanh": EXP,
    "Sin": EXP,
    "Cos": EXP,
    "Pow": EXP,
    "Softplus": EXP,
    "Sigmoid": EXP + 2,
    "Sqrt": 1,
    "Reciprocal": 1,
    "Gelu": EXP + 4,
    "FastGelu": EXP + 6,
    "BiasGelu": EXP + 5,
    "QuickGelu": EXP + 3,
    "HardSigmoid": 3,
    "HardSwish": 4,
    "Mish": 2 * EXP + 2,
    "Elu": EXP + 1,
    "Selu": EXP + 2,
    "Celu": EXP + 2,
    "QuantizeLinear": 3,
    "DequantizeLinear": 2,
}
LAYERNORM_PER_ELEMENT, LAYERNORM_PER_ROW = 5, 4
RMSNORM_PER_ELEMENT, RMSNORM_PER_ROW = 3, 3
SOFTMAX_PER_ELEMENT = 4 + EXP
FREE_OPS = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Shape", "Size", "Constant", "Dropout"}
MOVE_OPS = {
    "Transpose",
    "Concat",
    "Slice",
    "Gather",
    "GatherElements",
    "GatherND",
    "Split",
    "Pad",
    "Expand",
    "Tile",
    "Cast",
    "CastLike",
    "DepthToSpace",
    "SpaceToDepth",
    "ScatterND",
    "ConstantOfShape",
    "Range",
}
ELEMENTWISE = {
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Neg",
    "Abs",
    "Relu",
    "LeakyRelu",
    "PRelu",
    "Max",
    "Min",
    "Sum",
    "Mean",
    "Clip",
    "Where",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "Equal",
    "Less",
    "LessOrEqual",
    "Greater",
    "GreaterOrEqual",
    "Not",
    "And",
    "Or",
    "Xor",
    "Mod",
    "BiasAdd",
    *UNARY_FLOPS,
}
SAME_SHAPE = ELEMENTWISE | {
    "LayerNormalization",
    "SkipLayerNormalization",
    "RMSNormalization",
    "Softmax",
    "SimplifiedLayerNormalization",
    "LogSoftmax",
    "BatchNormalization",
    "Cast",
    "Identity",
}


@dataclass(frozen=True)
class OpCost:
    name: str
    op_type: str
    flops: int
    bytes: int


@dataclass(frozen=True)
class Cost:
    flops: int
    bytes: int
    per_op: tuple[OpCost, ...]
    uncounted: tuple[str, ...] = ()  # "name (op_type)" of nodes not fully counted (unknown op, or a shape missing)


@dataclass(frozen=True)
class Estimate:
    latency_ms: float
    power_w: float
    energy_mj: float
    utilisation: float  # share of the run the compute units work at the achievable rate
    efficiency: float
    source: PowerSource = PowerSource.estimate
    model: str = "roofline"

    def to_manifest(self) -> dict:
        return {
            "mean": round(self.power_w, 4),
            "source": self.source.value,
            "model": self.model,
            "latency_ms": round(self.latency_ms, 4),
            "energy_mj": round(self.energy_mj, 4),
            "efficiency": self.efficiency,
        }


class Calibration(NamedTuple):
    efficiency: float  # the factor that makes the estimate equal the measurement (clamped to (0, 1])
    error_pct: float  # signed error of the estimate made with the catalogue's efficiency: 100·(est - meas)/meas


def _numel(shape) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape is not None else 0


def _attention(ins, outs, q_heads: int | None, four_d: bool) -> int | None:
    q, k, y = ins[0], ins[1], outs[0]
    if q is None or k is None or y is None or (not four_d and not q_heads):
        return None
    sk = k[-2] if four_d else k[1]
    head_dim = q[-1] if four_d else q[-1] // q_heads
    scores = _numel(q) // head_dim * sk
    return 2 * sk * (_numel(q) + _numel(y)) + scores * (1 + SOFTMAX_PER_ELEMENT)


def _norm(x, rows, per_element, per_row, affine) -> int:
    return (per_element + affine) * _numel(x) + per_row * rows


def _flops(node, ins, outs, attrs) -> int | None:
    """FLOPs of one node from its input/output shapes (None: unknown op or a shape is missing)."""
    op, x, y = node.op_type, (ins[0] if ins else None), (outs[0] if outs else None)
    present = [bool(i) for i in node.input]
    if op in FREE_OPS or op in MOVE_OPS:
        return 0
    if y is None or (x is None and op not in ("Constant",)):
        return None
    if op in ("MatMul", "MatMulInteger", "FusedMatMul"):
        return 2 * _numel(y) * (x[-2] if attrs.get("transA") else x[-1])
    if op == "QLinearMatMul":
        return 2 * _numel(y) * x[-1]
    if op == "Gemm":
        k = x[0] if attrs.get("transA") else x[1]
        return 2 * _numel(y) * k + (_numel(y) if len(present) > 2 and present[2] else 0)
    if op in ("Conv", "ConvInteger", "QLinearConv", "FusedConv"):
        w, bias = (ins[3], 8) if op == "QLinearConv" else (ins[1], 2)
        has_bias = len(present) > bias and present[bias]
        return 2 * _numel(y) * _numel(w[1:]) + (_numel(y) if has_bias else 0) if w is not None else None
    if op == "ConvTranspose" and ins[1] is not None:
        return 2 * _numel(x) * _numel(ins[1][1:]) + (_numel(y) if len(present) > 2 and present[2] else 0)
    if op in (
        "LayerNormalization",
        "SkipLayerNormalization",
        "SimplifiedLayerNormalization",
        "RMSNormalization",
        "SkipSimplifiedLayerNormalization",
    ):
        axis = attrs.get("axis", -1) % max(len(x), 1)
        rows = _numel(x[:axis])
        simple = "Simplified" in op or op.startswith("RMS")
        affine = sum(present[1:3]) if op in ("LayerNormalization", "RMSNormalization") else sum(present[2:5])
        skip = _numel(x) if op.startswith("Skip") else 0
        per = (RMSNORM_PER_ELEMENT, RMSNORM_PER_ROW) if simple else (LAYERNORM_PER_ELEMENT, LAYERNORM_PER_ROW)
        return skip + _norm(x, rows, *per, affine)
    if op in ("InstanceNormalization", "GroupNormalization"):
        rows = x[0] * (attrs.get("num_groups", 0) or x[1])
        return _norm(x, rows, LAYERNORM_PER_ELEMENT, LAYERNORM_PER_ROW, 2)
    if op == "BatchNormalization":
        return 2 * _numel(y)
    if op in ("Softmax", "LogSoftmax"):
        return SOFTMAX_PER_ELEMENT * _numel(y)
    if op in ("MaxPool", "AveragePool", "LpPool"):
        return _numel(y) * _numel(attrs.get("kernel_shape", [1]))
    if op.startswith("Global") or op.startswith("Reduce"):
        return _numel(x) * (2 if op in ("ReduceSumSquare", "ReduceL2", "GlobalLpPool") else 1)
    if op == "Attention" and node.domain in ("", "ai.onnx"):
        return _attention(ins, outs, attrs.get("q_num_heads"), four_d=len(x) == 4)
    if op == "MultiHeadAttention":
        return _attention(ins, outs, attrs.get("num_heads"), four_d=False)
    if op == "Attention" and node.domain == "com.microsoft":  # input projection [B,S,hidden] x [hidden, 3·hidden]
        w, heads = ins[1], attrs.get("num_heads")
        if w is None or not heads:
            return None
        b, s, hidden = x[0], x[1], w[1] // 3
        scores = b * heads * s * s
        core = 4 * scores * (hidden // heads) + scores * (1 + SOFTMAX_PER_ELEMENT)
        return 2 * b * s * x[2] * w[1] + b * s * w[1] + core
    if op in ("Resize", "Upsample"):  # 2 FLOPs per tap; taps per resized axis: nearest 0, linear 2, cubic 4
        taps = {"linear": 2, "bilinear": 2, "cubic": 4}.get(attrs.get("mode", b"nearest").decode(), 0)
        return 2 * _numel(y) * taps ** sum(a != b for a, b in zip(x, y)) if taps else 0
    if op in ELEMENTWISE:
        return UNARY_FLOPS.get(op, 1) * _numel(y)
    return None


def _tensor_table(graph) -> dict[str, tuple[tuple | None, int]]:
    """name -> (static shape or None, bytes per element)."""
    table = {}
    for vi in (*graph.input, *graph.value_info, *graph.output):
        tt = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
        known = tt.HasField("shape") and None not in dims
        size = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).itemsize if tt.elem_type else 4
        table[vi.name] = (dims if known else None, size)
    for init in graph.initializer:
        table[init.name] = (tuple(init.dims), np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize)
    return table


def _broadcast(shapes) -> tuple:
    try:
        return tuple(np.broadcast_shapes(*[s for s in shapes if s is not None]))
    except ValueError:  # per-axis operands (QuantizeLinear scales) do not broadcast numpy-style
        return shapes[0]


def _with_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - a model onnx cannot infer is counted with the shapes it already carries
        return model


def count_cost(model, *, on_chip_bytes: int = 0) -> Cost:
    """FLOPs and DRAM bytes per node of a (legalized) ONNX model (onnx.ModelProto or onnx_ir.Model).
    `on_chip_bytes` > 0: an intermediate activation no larger than this is taken to stay in cache/SRAM between its
    producer and consumers and costs no DRAM bytes (weights, graph inputs and graph outputs always do)."""
    if not isinstance(model, onnx.ModelProto):
        import onnx_ir as ir

        model = ir.serde.serialize_model(model)
    graph = _with_shapes(model).graph
    table = _tensor_table(graph)
    weights = {i.name for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            weights.update(node.output)
    io = {v.name for v in (*graph.input, *graph.output)}
    read_weights: set[str] = set()
    per_op, uncounted = [], []
    for node in graph.node:
        if node.op_type == "Constant":
            continue
        ins = [table.get(n, (None, 4))[0] if n else None for n in node.input]
        for out in node.output:  # shapes onnx could not infer (contrib ops), for ops that keep their input's
            if table.get(out, (None, 0))[0] is None and node.op_type in SAME_SHAPE and ins and ins[0] is not None:
                table[out] = (
                    _broadcast(ins) if node.op_type in ELEMENTWISE else ins[0],
                    table.get(node.input[0], (None, 4))[1],
                )
        outs = [table.get(n, (None, 4))[0] for n in node.output]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        flops = _flops(node, ins, outs, attrs)
        moved, shapeless = 0, False
        for name in (*[n for n in node.input if n], *node.output) if node.op_type not in FREE_OPS else ():
            shape, size = table.get(name, (None, 4))
            shapeless |= shape is None
            if name in weights:
                if name in read_weights:
                    continue
                read_weights.add(name)
            elif name not in io and _numel(shape) * size <= on_chip_bytes:
                continue
            moved += _numel(shape) * size
        if flops is None or shapeless:
            uncounted.append(f"{node.name or node.output[0]} ({node.op_type})")
        per_op.append(OpCost(node.name or node.output[0], node.op_type, flops or 0, moved))
    return Cost(sum(o.flops for o in per_op), sum(o.bytes for o in per_op), tuple(per_op), tuple(uncounted))


def _peak_ops(hardware: Hardware, precision) -> float:
    precision = Precision(getattr(precision, "value", precision))
    peak = hardware.peak_gops.get(precision)
    if not peak:
        raise TargetError(
            f"the target's hardware figures have no peak_gops for {precision.value}",
            "add it to the target's hardware block in targets.yaml, citing the vendor figure",
        )
    return peak * 1e9


def _roofline(cost: Cost, peak_ops: float, bw: float, efficiency: float) -> tuple[float, float]:
    """-> (seconds, seconds the compute units are the bottleneck)."""
    total = compute = 0.0
    for op in cost.per_op:
        c, m = op.flops / (peak_ops * efficiency), op.bytes / bw
        total += max(c, m)
        compute += c if c >= m else 0.0
    return total, compute


def estimate(cost: Cost, hardware: Hardware, precision, *, efficiency: float | None = None) -> Estimate:
    """Per op, time = max(flops / (peak·efficiency), bytes / bandwidth); latency is their sum.
    Power = idle + (active - idle)·utilisation, utilisation = the share of that time spent compute-bound."""
    eff = hardware.efficiency if efficiency is None else efficiency
    seconds, compute = _roofline(cost, _peak_ops(hardware, precision), hardware.mem_bw_gbs * 1e9, eff)
    utilisation = compute / seconds if seconds > 0 else 0.0
    power = hardware.idle_w + (hardware.active_w - hardware.idle_w) * utilisation
    return Estimate(seconds * 1e3, power, power * seconds * 1e3, utilisation, eff)


def calibrate(measured_ms: float, cost: Cost, hardware: Hardware, precision) -> Calibration:
    """The efficiency at which the estimate equals `measured_ms` (bisection; the estimate falls as efficiency
    rises), clamped to 1.0 when the measurement beats the roofline; and the catalogue efficiency's error."""
    if measured_ms <= 0:
        raise ValueError(f"measured latency must be positive, got {measured_ms}")
    error = 100.0 * (estimate(cost, hardware, precision).latency_ms - measured_ms) / measured_ms
    peak, bw = _peak_ops(hardware, precision), hardware.mem_bw_gbs * 1e9
    target = measured_ms / 1e3
    if cost.flops == 0 or _roofline(cost, peak, bw, 1.0)[0] >= target:
        return Calibration(1.0 if cost.flops else hardware.efficiency, error)
    low, high = 1e-9, 1.0  # latency(low) > target > latency(high)
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if _roofline(cost, peak, bw, mid)[0] > target else (low, mid)
    return Calibration(high, error)
