"""INT8 post-training quantization: where to quantize (Placement), and how, per backend.

ONNX model + CalibrationData + Placement
  -> quantize_onnx_qdq : onnxruntime.quantization.quantize_static, QDQ format, per-channel weights (ORT CPU; with
                         symmetric=True the Q/DQ ONNX that TensorRT --stronglyTyped and NPU compilers take)
  -> quantize_openvino.py: nncf.quantize(model_type=TRANSFORMER, ignored_scope from the placement) -> ov.Model
  (sensitivity.py ranks the layers whose quantization costs most; Placement.keep_float() keeps them float)

Placement.transformer_aware() leaves LayerNorm (fused or decomposed), Softmax, GELU/Erf and residual Adds in float,
and with them the non-layer ops that feed them (so they read float tensors, not fake-quantized ones). Residual Adds
stay float only in models with a LayerNorm or Softmax (float_residual_adds=None): in a CNN they feed no LayerNorm,
and a float Add there blocks OpenVINO's int8 Conv+sum fusion (resnet18: 2.14 vs 1.66 ms, no accuracy change);
Placement.naive() is what the tools do when asked for nothing: every op type they know how to quantize.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from vdeploy.calibration import CalibrationData
from vdeploy.errors import VdeployError

COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})  # the "layers" sensitivity ranks
FLOAT_ISLAND_TOKENS = frozenset(
    {"LayerNormalization", "Softmax", "LogSoftmax", "layer_norm", "softmax", "ReduceMean", "ReduceSum", "ReduceMax"}
    | {"MultiHeadAttention", "Attention"}  # fused attention cores: their q/k/v (and the Split/Add feeding) stay float
)  # passed to precision.fp32_islands
GELU_OPS = frozenset({"Gelu", "Erf", "FastGelu", "BiasGelu"})
GELU_RULE_PREFIXES = ("gelu", "erf")


class QuantizeError(VdeployError):
    kind = "quantize"


class PlacementKind(str, enum.Enum):
    transformer_aware = "transformer-aware"
    naive = "naive"


@dataclass(frozen=True)
class Placement:
    """Which nodes stay float. Overrides name nodes (ONNX node names): keep_float_nodes are never quantized,
    force_int8_nodes are quantized even where the defaults would keep them float."""

    kind: PlacementKind = PlacementKind.transformer_aware
    keep_float_nodes: frozenset[str] = field(default_factory=frozenset)
    force_int8_nodes: frozenset[str] = field(default_factory=frozenset)
    float_residual_adds: bool | None = None  # None: when the model has a LayerNorm or Softmax (transformer-aware)

    @classmethod
    def transformer_aware(cls) -> Placement:
        return cls(PlacementKind.transformer_aware)

    @classmethod
    def naive(cls) -> Placement:
        return cls(PlacementKind.naive)

    @classmethod
    def for_target(cls, int8_everywhere: bool) -> Placement:
        """NPU profiles that force INT8 everywhere get the naive placement; everything else is transformer-aware."""
        return cls.naive() if int8_everywhere else cls.transformer_aware()

    def keep_float(self, names: Iterable[str]) -> Placement:
        return replace(self, keep_float_nodes=self.keep_float_nodes | frozenset(names))

    def force_int8(self, names: Iterable[str]) -> Placement:
        return replace(self, force_int8_nodes=self.force_int8_nodes | frozenset(names))

    def float_nodes(self, model) -> tuple[str, ...]:
        """Names of the ONNX nodes (onnx.ModelProto, nodes named) this placement keeps float, in graph order."""
        unknown = sorted((self.keep_float_nodes | self.force_int8_nodes) - {n.name for n in model.graph.node})
        if unknown:
            raise QuantizeError(
                f"per-layer override names no node of the model: {', '.join(unknown[:5])}",
                "use ONNX node names as `vdeploy coverage` or the manifest lists them",
            )
        names: set[str] = set(self.keep_float_nodes)
        if self.kind is PlacementKind.transformer_aware:
            names |= _transformer_float_nodes(model, self.float_residual_adds)
        names -= self.force_int8_nodes
        return tuple(n.name for n in model.graph.node if n.name in names)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind.value,
            "keep_float_nodes": sorted(self.keep_float_nodes),
            "force_int8_nodes": sorted(self.force_int8_nodes),
            "float_residual_adds": self.float_residual_adds,
        }


def _transformer_float_nodes(model, residual_adds: bool | None) -> set[str]:
    """LayerNorm/Softmax islands (fused, rule-decomposed or exporter-decomposed), GELU/Erf, residual Adds."""
    import onnx_ir as ir

    from vdeploy.graph_passes.precision import REDUCTIONS, fp32_islands
    from vdeploy.graph_passes.rules.base import RULE_KEY

    ir_model = ir.from_proto(model)
    islands = fp32_islands(ir_model, FLOAT_ISLAND_TOKENS)
    transformer = any(n.op_type not in REDUCTIONS for n in islands)  # not just a CNN's global-average pool
    names = {n.name for n in islands} if transformer else set()
    residual_adds = transformer if residual_adds is None else residual_adds
    for node in ir_model.graph:
        rule = node.metadata_props.get(RULE_KEY, "")
        if node.op_type in GELU_OPS or rule.startswith(GELU_RULE_PREFIXES):
            names.add(node.name)
            names.update(n.name for n in _gelu_neighbours(node))
        elif residual_adds and node.op_type == "Add" and _is_residual_add(node):
            names.add(node.name)
    return _feeding_float(ir_model.graph, names)


def _feeding_float(graph, names: set[str]) -> set[str]:
    """Add the non-layer nodes that feed the float nodes (position-embedding Add, Concat, Reshape, Relu, ...),
    back to the nearest Conv/MatMul/Gemm: quantizers put Q/DQ on those nodes' outputs, so without this a float
    LayerNorm or residual Add would still read a fake-quantized tensor."""
    import onnx_ir as ir

    by_name = {n.name: n for n in graph}
    todo = [by_name[n] for n in names if n in by_name]
    while todo:
        node = todo.pop()
        for value in node.inputs:
            if value is None or _is_const(value) or value.dtype != ir.DataType.FLOAT:
                continue
            producer = value.producer()
            if producer is not None and producer.op_type not in COMPUTE_OPS and producer.name not in names:
                names.add(producer.name)
                todo.append(producer)
    return names


def _is_const(value) -> bool:
    if value is None or value.const_value is not None or value.is_initializer():
        return True
    producer = value.producer()
    return producer is not None and producer.op_type == "Constant"


def _is_residual_add(node) -> bool:
    """An Add of two computed tensors (x + f(x)), not a bias, epsilon or position-embedding add."""
    return len(node.inputs) == 2 and not any(_is_const(v) for v in node.inputs)


def _gelu_neighbours(erf) -> list:
    """The elementwise ops of an exported GELU around Erf: x/sqrt(2) before it, (1 + .) * x * 0.5 after it."""
    found = []
    producer = erf.inputs[0].producer() if erf.inputs and erf.inputs[0] is not None else None
    if producer is not None and producer.op_type in ("Div", "Mul") and any(_is_const(v) for v in producer.inputs):
        found.append(producer)
    node = erf
    for _ in range(3):
        consumers = [u.node for out in node.outputs for u in out.uses()]
        if len(consumers) != 1 or consumers[0].op_type not in ("Add", "Mul"):
            break
        node = consumers[0]
        found.append(node)
    return found


# ---- ONNX Runtime / TensorRT: Q/DQ ONNX -----------------------------------------------------------------------


def quantize_onnx_qdq(
    model,
    calib: CalibrationData,
    placement: Placement = Placement(),
    *,
    symmetric: bool = False,
    per_channel: bool = True,
    calibration_cache: Path | None = None,
    range_overrides: dict | None = None,
):
    """A QDQ INT8 copy of `model` (onnx.ModelProto). symmetric=False: uint8 activations, int32 biases (ORT CPU's
    fast path); symmetric=True: int8 symmetric activations and weights, float biases (TensorRT, NPU compilers).
    range_overrides: tensor name -> (rmin, rmax) used instead of calibrated ranges (QAT's learned ranges)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = name_nodes(model)
    exclude = list(placement.float_nodes(model))
    extra: dict[str, object] = {
        "ActivationSymmetric": symmetric,
        "WeightSymmetric": True,
        "QuantizeBias": not symmetric,
    }
    if placement.kind is PlacementKind.naive:
        extra["ForceQuantizeNoInputCheck"] = True
    if range_overrides:
        import numpy as np

        tensors = {i for n in model.graph.node for i in n.input} | {o for n in model.graph.node for o in n.output}
        extra["TensorQuantOverrides"] = {
            name: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}]
            for name, (lo, hi) in range_overrides.items()
            if name in tensors
        }
    with tempfile.TemporaryDirectory(prefix="vdeploy-qdq-") as tmp, _quiet_ort_quantization():
        out = Path(tmp) / "model.int8.onnx"
        try:
            quantize_static(
                model,
                out,
                _Reader(calib, model_batch_size(model)),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                reduce_range=False,
                activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=exclude,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options=extra,
                calibration_cache_path=calibration_cache,
            )
        except Exception as exc:  # the quantizer raises assorted types from deep inside
            raise QuantizeError(
                f"ONNX Runtime static quantization failed: {type(exc).__name__}: {exc}"[:400],
                "check the calibration data matches the model inputs",
            ) from None
        quantized = onnx.load(str(out))
    return _unquantize_float_inputs(quantized, model, set(exclude)) if exclude else quantized


def _unquantize_float_inputs(model, original, float_names: set[str]):
    """Drop the Q -> DQ pairs whose dequantized tensor only float nodes read (ORT quantizes Conv/MatMul/Gemm
    outputs for its fused kernels, also where the consumer is a LayerNorm, Softmax or residual Add): those nodes
    then read the float tensor itself. A pair stands in for a ReLU the quantizer removed when the readers did not
    read the Q input before quantization, or when another node produces it now (ORT renames a Conv's output to
    the name of the ReLU it folded into the Q/DQ); such a pair stays."""
    graph = model.graph
    read_before = {n.name: set(n.input) for n in original.graph.node}
    producer_before = {o: n.name for n in original.graph.node for o in n.output}
    producer_now = {o: n.name for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    drop: set[int] = set()
    dropped_inputs: set[str] = set()
    for q in [n for n in graph.node if n.op_type == "QuantizeLinear"]:
        dqs = consumers.get(q.output[0], [])
        if not dqs or any(d.op_type != "DequantizeLinear" for d in dqs) or outputs & {d.output[0] for d in dqs}:
            continue
        readers = [r for d in dqs for r in consumers.get(d.output[0], [])]
        same_source = producer_before.get(q.input[0]) == producer_now.get(q.input[0])
        float_readers = all(r.name in float_names and q.input[0] in read_before.get(r.name, ()) for r in readers)
        if same_source and readers and float_readers:
            for dq in dqs:
                for reader in consumers[dq.output[0]]:
                    reader.input[:] = [q.input[0] if i == dq.output[0] else i for i in reader.input]
            drop.update(id(n) for n in (q, *dqs))
            dropped_inputs.update(i for n in (q, *dqs) for i in n.input[1:])
    kept = [n for n in graph.node if id(n) not in drop]
    del graph.node[:]
    graph.node.extend(kept)
    used = {i for n in graph.node for i in n.input}
    unused = [t for t in graph.initializer if t.name in dropped_inputs and t.name not in used]
    for tensor in unused:
        graph.initializer.remove(tensor)
    return model


def name_nodes(model):
    """A copy of `model` where every node has a unique name (quantizers and overrides address nodes by name)."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    seen = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in seen:
                name += "_"
            node.name = name
            seen.add(name)
    return model


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader protocol over CalibrationData."""

    def __init__(self, calib: CalibrationData, batch_size: int):
        self._batches = calib.batches(batch_size)

    def get_next(self):
        return next(self._batches, None)


def model_batch_size(model, dynamic_default: int = 16) -> int:
    dims = model.graph.input[0].type.tensor_type.shape.dim if model.graph.input else []
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else dynamic_default


@contextlib.contextmanager
def _quiet_ort_quantization():
    """quantize_static logs a pre-processing advice at WARNING (root logger) on every call: keep stderr clean."""
    root, level = logging.getLogger(), logging.getLogger().level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
