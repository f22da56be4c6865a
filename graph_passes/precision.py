"""FP16 with FP32 islands: a strongly-typed mixed-precision graph (the form TensorRT 11's --stronglyTyped builds).

float32 model -> choose the nodes that stay FP32 (keep_fp32 tokens + decomposed-LayerNorm/Softmax chains + logits)
-> every other float node computes in FP16 (value types, initializers, Cast `to`, ConstantOfShape values)
-> a Cast at every FP16/FP32 border (one per value and direction, shared by its consumers)
-> graph inputs and outputs stay FP32 (the Casts sit inside the graph).

A keep_fp32 token matches a node by op type ("Softmax"), by node name, or by the rule that created it (node metadata
RULE_KEY, exact or as a family prefix: "layer_norm" matches "layer_norm_decomposition"); "logits" keeps the compute
node that produces each graph output (through Reshape/Flatten/Squeeze/... on the way). Decompositions that carry no
rule name (an exporter's own ReduceMean/Sub/Pow/.../Div LayerNorm, a hand-written softmax) are found from the kept
reductions: the elementwise chain from a kept reduction to the next kept node, or to its first Div/Reciprocal, stays
FP32 with it. Nodes holding subgraphs (If/Loop) stay FP32.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from vdeploy.graph_passes.rules.base import RULE_KEY

LOGITS = "logits"  # keep_fp32 token: the producer of each graph output
REDUCTIONS = frozenset(
    {
        "ReduceMean",
        "ReduceSum",
        "ReduceMax",
        "ReduceMin",
        "ReduceL2",
        "ReduceSumSquare",
        "ReduceLogSumExp",
        "ReduceProd",
    }
)
DEFAULT_KEEP_FP32 = frozenset({
    "LayerNormalization", "Softmax", "LogSoftmax", *REDUCTIONS,  # op types
    "layer_norm", "softmax",  # rule families (their decompositions stay FP32 as a whole)
    LOGITS,
})  # fmt: skip

# A chain from a kept reduction through these ops stays FP32 when it ends at a kept node or at a TERMINAL op.
_CHAIN_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Exp"})
_TERMINAL_OPS = frozenset({"Div", "Reciprocal"})
_CHAIN_DEPTH = 4
# Ops that only move or reshape the logits between their producer and the graph output.
_PASS_THROUGH = frozenset({"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Cast"})
# Float inputs whose type is fixed to float32 by the op schema (not the op's T): they never become FP16.
_FP32_INPUTS = {"Resize": frozenset({2}), "Upsample": frozenset({1})}
_DTYPE_ATTRS = ("to", "dtype")  # Cast, EyeLike, RandomNormal(Like), RandomUniform(Like), Multinomial

F32, F16 = ir.DataType.FLOAT, ir.DataType.FLOAT16


@dataclass(frozen=True)
class PrecisionResult:
    model: ir.Model  # the same object, rewritten in place
    fp32_nodes: tuple[str, ...]  # names of the float nodes kept in FP32 (the islands), graph order
    casts_inserted: int


def to_fp16(model: ir.Model, keep_fp32: Iterable[str] = DEFAULT_KEEP_FP32) -> PrecisionResult:
    """Convert `model` (float32) in place to FP16 compute with FP32 islands; see the module docstring."""
    graph = model.graph
    _name_nodes(graph)  # fp32_nodes and the Casts refer to nodes by name
    kept = set(fp32_islands(model, keep_fp32))  # runs shape inference: dtypes of intermediate values
    nodes = list(graph)
    float_nodes = [n for n in nodes if _is_float_node(n)]
    half = {n for n in float_nodes if n not in kept and n.op_type != "Constant"}
    half |= {n for n in float_nodes if n.op_type == "Constant" and n not in kept and _all_uses_want_fp16(n, half)}

    for node in half:
        _convert_node(node)
    _convert_initializers(graph, half)
    casts = _insert_casts(graph, nodes, half)
    casts += _cast_outputs(graph)
    fp32 = tuple(n.name for n in float_nodes if n not in half)
    return PrecisionResult(model, fp32, casts)


class Fp16Islands(ir.passes.InPlacePass):
    """to_fp16 as an onnx-ir pass; `result` holds the last PrecisionResult."""

    def __init__(self, keep_fp32: Iterable[str] = DEFAULT_KEEP_FP32):
        super().__init__()
        self.keep_fp32 = frozenset(keep_fp32)
        self.result: PrecisionResult | None = None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.result = to_fp16(model, self.keep_fp32)
        return ir.passes.PassResult(model, modified=True)


# ---- choosing the islands ---------------------------------------------------------------------------------------


def fp32_islands(model: ir.Model, keep_fp32: Iterable[str] = DEFAULT_KEEP_FP32) -> list[ir.Node]:
    """The float nodes that keep_fp32 keeps (with decomposition chains and logits), in graph order. Also the
    float-sensitive regions INT8 placement leaves unquantized. Runs shape inference on `model` first."""
    keep_fp32 = frozenset(keep_fp32)
    common_passes.ShapeInferencePass(strict_mode=False)(model)
    float_nodes = [n for n in model.graph if _is_float_node(n)]
    kept = {n for n in float_nodes if _matches(n, keep_fp32) or _has_subgraph(n)}
    if LOGITS in keep_fp32:
        kept |= _logits_producers(model.graph)
    kept |= _decomposition_chains(kept)
    return [n for n in float_nodes if n in kept]


def _is_float(value: ir.Value | None) -> bool:
    return value is not None and value.dtype == F32


def _is_float_node(node: ir.Node) -> bool:
    return any(_is_float(v) for v in (*node.inputs, *node.outputs))


def _has_subgraph(node: ir.Node) -> bool:
    return any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values())


def _matches(node: ir.Node, tokens: frozenset) -> bool:
    if node.op_type in tokens or (node.name and node.name in tokens):
        return True
    rule = node.metadata_props.get(RULE_KEY)
    return bool(rule) and (rule in tokens or any(rule.startswith(t + "_") for t in tokens))


def _logits_producers(graph: ir.Graph) -> set[ir.Node]:
    """The compute node behind each graph output, and the pass-through nodes between them."""
    found: set[ir.Node] = set()
    for value in graph.outputs:
        node = value.producer()
        while node is not None and _is_float_node(node):
            found.add(node)
            if node.op_type not in _PASS_THROUGH or not node.inputs or node.inputs[0] is None:
                break
            node = node.inputs[0].producer()
    return found


def _decomposition_chains(kept: set[ir.Node]) -> set[ir.Node]:
    """Elementwise chains leaving a kept reduction that end at a kept node or a Div/Reciprocal (a LayerNorm's
    Sub/Pow/Add/Sqrt/Div, a softmax's Sub/Exp/Div); a Reciprocal brings the Mul that applies it."""
    grown: set[ir.Node] = set()

    def walk(node: ir.Node, path: tuple[ir.Node, ...]) -> None:
        for consumer in _consumers(node):
            if consumer in kept:
                grown.update(path)
            elif consumer.op_type in _CHAIN_OPS and consumer not in path and len(path) < _CHAIN_DEPTH:
                if consumer.op_type in _TERMINAL_OPS:
                    grown.update((*path, consumer))
                    if consumer.op_type == "Reciprocal":
                        grown.update(c for c in _consumers(consumer) if c.op_type == "Mul")
                else:
                    walk(consumer, (*path, consumer))

    for node in [n for n in kept if n.op_type in REDUCTIONS]:
        walk(node, ())
    return grown


def _consumers(node: ir.Node) -> list[ir.Node]:
    return [use.node for out in node.outputs for use in out.uses()]


def _wants_fp16(node: ir.Node, index: int, half: set[ir.Node]) -> bool:
    return node in half and index not in _FP32_INPUTS.get(node.op_type, ())


def _all_uses_want_fp16(node: ir.Node, half: set[ir.Node]) -> bool:
    uses = [use for out in node.outputs for use in out.uses()]
    outputs_are_graph_outputs = any(out.is_graph_output() for out in node.outputs)
    return bool(uses) and not outputs_are_graph_outputs and all(_wants_fp16(u.node, u.idx, half) for u in uses)


# ---- rewriting --------------------------------------------------------------------------------------------------


def _to_half_tensor(tensor: ir.TensorProtocol, name: str | None = None) -> ir.Tensor:
    array = tensor.numpy().astype(np.float16)
    return ir.Tensor(array, name=name if name is not None else tensor.name)


def _convert_node(node: ir.Node) -> None:
    """Outputs typed FP16; Cast `to` / dtype attributes and float tensor attributes (Constant, ConstantOfShape)
    moved to FP16."""
    for out in node.outputs:
        if _is_float(out):
            out.type = ir.TensorType(F16)
    for name, attr in list(node.attributes.items()):
        if name in _DTYPE_ATTRS and attr.type == ir.AttributeType.INT and attr.as_int() == F32:
            node.attributes[name] = ir.AttrInt64(name, int(F16))
        elif attr.type == ir.AttributeType.TENSOR and attr.as_tensor().dtype == F32:
            node.attributes[name] = ir.AttrTensor(name, _to_half_tensor(attr.as_tensor()))
        elif node.op_type == "Constant" and name in ("value_float", "value_floats"):
            array = np.asarray(attr.value, dtype=np.float16)
            node.attributes.pop(name)
            node.attributes["value"] = ir.AttrTensor("value", ir.Tensor(array))


def _convert_initializers(graph: ir.Graph, half: set[ir.Node]) -> None:
    """Float32 initializers used only by FP16 nodes become FP16; one shared by both kinds gets an FP16 twin
    (a new, uniquely named initializer) for its FP16 users."""
    names = _all_names(graph)
    for value in list(graph.initializers.values()):
        if not _is_float(value) or value.const_value is None or value.is_graph_input():
            continue
        uses = list(value.uses())
        half_uses = [u for u in uses if _wants_fp16(u.node, u.idx, half)]
        if not half_uses:
            continue
        if len(half_uses) == len(uses) and not value.is_graph_output():
            value.const_value = _to_half_tensor(value.const_value)
            value.type = ir.TensorType(F16)
            continue
        twin_name = _unique(f"{value.name}_fp16", names)
        twin = ir.Value(
            name=twin_name,
            shape=value.shape,
            type=ir.TensorType(F16),
            const_value=_to_half_tensor(value.const_value, twin_name),
        )
        graph.register_initializer(twin)
        for use in half_uses:
            use.node.replace_input_with(use.idx, twin)


def _insert_casts(graph: ir.Graph, nodes: list[ir.Node], half: set[ir.Node]) -> int:
    """A Cast wherever a node's float input has the other precision; one Cast per (value, direction)."""
    names = _all_names(graph)
    cache: dict[tuple[ir.Value, ir.DataType], ir.Value] = {}
    for node in nodes:
        for index, value in enumerate(node.inputs):
            if value is None or value.dtype not in (F32, F16):
                continue
            want = F16 if _wants_fp16(node, index, half) else F32
            if value.dtype == want or (value.dtype == F16 and not _was_converted(value, half)):
                continue  # already right, or FP16 in the source model: not ours to touch
            key = (value, want)
            if key not in cache:
                cache[key] = _cast(graph, value, want, names, before=node)
            node.replace_input_with(index, cache[key])
    return len(cache)


def _was_converted(value: ir.Value, half: set[ir.Node]) -> bool:
    """True for a value this pass turned FP16 (produced by an FP16 node, or a converted/twin initializer)."""
    producer = value.producer()
    return producer in half if producer is not None else value.is_initializer()


def _cast(graph: ir.Graph, value: ir.Value, to: ir.DataType, names: set[str], before: ir.Node) -> ir.Value:
    suffix = "fp16" if to == F16 else "fp32"
    out = ir.Value(name=_unique(f"{value.name}_{suffix}", names), shape=value.shape, type=ir.TensorType(to))
    node = ir.Node(
        "",
        "Cast",
        [value],
        [ir.AttrInt64("to", int(to))],
        outputs=[out],
        name=_unique(f"{value.name}_cast_{suffix}", names),
    )
    graph.insert_before(before, node)
    return out


def _cast_outputs(graph: ir.Graph) -> int:
    """Graph outputs that became FP16 get a Cast back to FP32 under their original name."""
    names = _all_names(graph)
    count = 0
    for i, value in enumerate(list(graph.outputs)):
        if value.dtype != F16 or value.producer() is None:
            continue
        name = value.name
        value.name = _unique(f"{name}_fp16", names)
        out = ir.Value(name=name, shape=value.shape, type=ir.TensorType(F32))
        graph.append(
            ir.Node(
                "",
                "Cast",
                [value],
                [ir.AttrInt64("to", int(F32))],
                outputs=[out],
                name=_unique(f"{name}_cast_fp32", names),
            )
        )
        graph.outputs[i] = out
        count += 1
    return count


def _name_nodes(graph: ir.Graph) -> None:
    names = {n.name for n in graph if n.name}
    for i, node in enumerate(graph):
        if not node.name:
            node.name = _unique(f"{node.op_type}_{i}", names)


def _all_names(graph: ir.Graph) -> set[str]:
    names = {v.name for v in (*graph.inputs, *graph.initializers.values()) if v.name}
    for node in graph:
        names.update(v.name for v in node.outputs if v.name)
        if node.name:
            names.add(node.name)
    return names


def _unique(base: str, names: set[str]) -> str:
    name, i = base, 1
    while name in names:
        name, i = f"{base}_{i}", i + 1
    names.add(name)
    return name
