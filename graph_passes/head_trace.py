"""What changes in a graph when attention heads are removed: the Trace of edits, and the rules shared by both walks.

Cut (axis holding the heads, indices kept) on each value of the paths (head_paths.py walks them) -> Trace: sliced
constants, shape-constant entries, deferred Slice bounds / Split sizes, new value shapes -> Trace.apply(graph).
reshape_map follows a cut through a Reshape; projection() slices a MatMul/Gemm weight; check_private() refuses a
block whose changed values are read outside its own path. Nothing is changed until Trace.apply().

A value on a path carries a Cut: the axis holding the heads (alone, or as a factor of a merged axis such as
[.., 3·H·Dh]) and the indices kept along it. Every value that changes shape must be used only by the block's own
path, so no other part of the graph sees a different tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from vdeploy.graph_passes.rules.base import static_shape

ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div"})


class Refused(Exception):
    """The block cannot be traced safely; the message says why (the block is left unpruned)."""


@dataclass(frozen=True)
class Cut:
    axis: int  # non-negative
    size: int  # the axis's length before pruning
    kept: tuple[int, ...]  # sorted indices kept along the axis

    def on(self, axis: int, size: int | None = None) -> Cut:
        return Cut(axis, self.size if size is None else size, self.kept)


@dataclass(frozen=True)
class Projection:
    """A weight the pruning slices: the q/k/v projection's output columns or the output projection's input rows."""

    node: str
    weight: str
    role: str  # "qkv" or "out"
    params_removed: int
    flops_removed: int  # per inference (2 x multiply-adds)


@dataclass
class Trace:
    cuts: dict = field(default_factory=dict)  # ir.Value -> Cut (its new shape)
    slices: list = field(default_factory=list)  # (node, input index, axis, kept): a constant sliced for that use
    entries: list = field(default_factory=list)  # (node, input index, position, value): one entry of a shape const
    deferred: list = field(default_factory=list)  # callables(trace) -> more entries, once every cut is known
    projections: list = field(default_factory=list)  # Projection
    nodes: set = field(default_factory=set)  # nodes on the paths

    def params_removed(self) -> int:
        """Elements of float constants removed (weights, biases, per-head bias tables)."""
        total = 0
        for node, index, axis, kept in self.slices:
            tensor = node.inputs[index].const_value
            if tensor.dtype.is_floating_point():
                shape = tensor.shape.numpy()
                total += math.prod(shape) // shape[axis] * (shape[axis] - len(kept))
        return total

    def apply(self, graph: ir.Graph, fresh: Callable[[str], str]) -> None:
        for make in self.deferred:
            make(self)
        for node, index, axis, kept in self.slices:
            old = node.inputs[index]
            array = np.take(old.const_value.numpy(), list(kept), axis=axis)
            node.replace_input_with(index, constant(graph, fresh(old.name or "const"), array))
        for node, index, position, value in self.entries:
            old = node.inputs[index]
            array = old.const_value.numpy().copy()
            array[position] = value
            node.replace_input_with(index, constant(graph, fresh(old.name or "shape"), array))
        for value, cut in self.cuts.items():
            dims = list(value.shape)
            dims[cut.axis] = len(cut.kept)
            value.shape = ir.Shape(dims)


def constant(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    array = np.ascontiguousarray(array)
    value = ir.Value(
        name=name,
        shape=ir.Shape(array.shape),
        type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
        const_value=ir.Tensor(array, name=name),
    )
    graph.register_initializer(value)
    return value


def is_constant(value: ir.Value | None) -> bool:
    return value is not None and value.const_value is not None and not value.is_graph_input()


def ints(value: ir.Value | None) -> list[int] | None:
    if not is_constant(value):
        return None
    return [int(x) for x in value.const_value.numpy().reshape(-1)]


def shape_of(value: ir.Value) -> tuple[int, ...]:
    shape = static_shape(value)
    if shape is None:
        raise Refused(f"{value.name}: shape unknown or not static")
    return shape


def attr_ints(node: ir.Node, name: str) -> list[int] | None:
    attr = node.attributes.get(name)
    return None if attr is None else list(attr.as_ints())


def attr_int(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_int()


def axes_of(node: ir.Node, rank: int) -> list[int] | None:
    """Squeeze/Unsqueeze axes (input from opset 13, attribute before), normalised to `rank`."""
    axes = ints(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else attr_ints(node, "axes")
    return None if axes is None else [a % rank for a in axes]


def reshape_map(src: tuple[int, ...], cut: Cut, dst: tuple[int, ...]) -> Cut:
    """The cut of `src` seen on `dst`, a tensor with the same elements in another shape (Reshape, Flatten)."""
    n, inner = src[cut.axis], math.prod(src[cut.axis + 1 :])
    keep = set(cut.kept)
    for b in range(len(dst)):  # a dst axis that holds the src axis as a factor: [.., H, Dh] -> [.., H*Dh]
        inner_b = math.prod(dst[b + 1 :])
        span = inner_b * dst[b]
        if dst[b] >= n and inner % inner_b == 0 and span % (inner * n) == 0 and inner_b <= inner:
            kept = tuple(i for i in range(dst[b]) if (i * inner_b // inner) % n in keep)
            return Cut(b, dst[b], kept)
    for b in range(len(dst)):  # the src axis spread over several dst axes: the kept set must depend on one of them
        inner_b = math.prod(dst[b + 1 :])
        if inner_b < inner or inner_b % inner or dst[b] == 1 or (inner * n) % (inner_b * dst[b]):
            continue
        digit = [(i * inner // inner_b) % dst[b] for i in range(n)]
        kept_b = sorted({digit[i] for i in keep})
        if all((digit[i] in kept_b) == (i in keep) for i in range(n)):
            return Cut(b, dst[b], tuple(kept_b))
    raise Refused(f"cannot follow heads through a reshape {list(src)} -> {list(dst)}")


def merge(value: ir.Value, wanted: list) -> Cut:
    """One cut from every consumer's: the union of what they keep, plus what no consumer reads (kept as it is)."""
    axes = {(cut.axis, cut.size) for cut, _ in wanted}
    if len(axes) != 1:
        raise Refused(f"{value.name}: heads reach it on different axes")
    ((axis, size),) = axes
    kept: set[int] = set()
    covered: set[int] = set()
    for cut, region in wanted:
        kept |= set(cut.kept)
        covered |= set(range(size)) if region is None else region
    kept |= set(range(size)) - covered
    for cut, region in wanted:
        if {k for k in kept if region is None or k in region} != set(cut.kept):
            raise Refused(f"{value.name}: its consumers keep different heads")
    return Cut(axis, size, tuple(sorted(kept)))


def broadcast_inputs(node: ir.Node, cut: Cut, inputs: Iterable[int] | None = None) -> list[tuple[int, Cut]]:
    """(input index, cut) for each input of an elementwise op that carries the head axis (not broadcast over it)."""
    rank = len(shape_of(node.outputs[0]))
    found = []
    for index in inputs if inputs is not None else range(len(node.inputs)):
        shape = shape_of(node.inputs[index])
        axis = cut.axis - (rank - len(shape))
        if axis < 0 or shape[axis] == 1:
            continue
        if shape[axis] != cut.size:
            raise Refused(f"{node.op_type} {node.name}: input {index} has {shape[axis]} along the heads")
        found.append((index, cut.on(axis)))
    return found


def reshape_entry(trace: Trace, node: ir.Node, out_cut: Cut, in_cut: Cut) -> None:
    """The Reshape's shape constant after pruning: the entry of the head axis set to its new length."""
    shape = ints(node.inputs[1])
    if shape is None:
        raise Refused(f"Reshape {node.name}: target shape is not a constant")
    entry = shape[out_cut.axis]
    if entry == -1:
        return
    if entry == 0 and not attr_int(node, "allowzero", 0):
        if in_cut.axis != out_cut.axis or in_cut.kept != out_cut.kept:
            raise Refused(f"Reshape {node.name}: copies a dimension the heads change")
        return
    trace.entries.append((node, 1, out_cut.axis, len(out_cut.kept)))


def projection(trace: Trace, node: ir.Node, cut: Cut, role: str, index: int = 0) -> None:
    """Slice a projection's weight: output columns (role qkv, the cut on its output) or input rows (role out, the cut
    on its input A). The weight must be a constant; Gemm's bias C is sliced with the columns."""
    gemm = node.op_type == "Gemm"
    weight = node.inputs[1]
    if not is_constant(weight):
        raise Refused(f"{node.op_type} {node.name}: the projection weight is not a constant")
    if index != 0 or (gemm and attr_int(node, "transA", 0)):
        raise Refused(f"{node.op_type} {node.name}: heads arrive on the weight side")
    w = weight.const_value.shape.numpy()
    value = node.outputs[0] if role == "qkv" else node.inputs[0]
    if cut.axis != len(shape_of(value)) - 1:
        raise Refused(f"{node.op_type} {node.name}: heads are not on the projection's channel axis")
    trans_b = gemm and attr_int(node, "transB", 0)
    if role == "qkv":
        axis = (0 if trans_b else 1) if gemm else len(w) - 1
    else:
        axis = (1 if trans_b else 0) if gemm else len(w) - 2
    trace.slices.append((node, 1, axis, cut.kept))
    if role == "qkv" and gemm and len(node.inputs) > 2 and node.inputs[2] is not None:
        bias = node.inputs[2]
        if shape_of(bias)[-1:] == (cut.size,):
            if not is_constant(bias):
                raise Refused(f"Gemm {node.name}: bias is not a constant")
            trace.slices.append((node, 2, len(shape_of(bias)) - 1, cut.kept))
    removed = math.prod(w) // w[axis] * (w[axis] - len(cut.kept))
    rows = math.prod(shape_of(node.outputs[0])) // shape_of(node.outputs[0])[-1]
    trace.projections.append(Projection(node.name, weight.name, role, removed, 2 * rows * removed))
    trace.nodes.add(node)


def check_private(trace: Trace, attention: ir.Node) -> None:
    """Every value that changes shape is read only by the block's own path."""
    allowed = trace.nodes | {attention}
    for value in trace.cuts:
        for user, _ in value.uses():
            if user not in allowed:
                raise Refused(f"{value.name} is also read by {user.op_type} {user.name}, outside the block")
        if value.is_graph_output():
            raise Refused(f"{value.name} is a graph output")
