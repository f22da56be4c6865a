"""Where one attention block's heads live in the graph, and what changes when some of them are removed.

internal Attention(Q, K, V[, bias]) -> backward from Q/K/V (head axis 1) through shape-only and elementwise ops to the
projection MatMul/Gemm weights (+ bias) -> forward from Y through shape-only ops to the output projection's rows
-> Trace: sliced constants, shape-constant entries, Slice bounds / Split sizes, and the new shape of every value on
the paths; or Refused(reason). Nothing is changed until Trace.apply().

A value on a path carries a Cut: the axis holding the heads (alone, or as a factor of a merged axis such as
[.., 3·H·Dh]) and the indices kept along it. Every value that changes shape must be used only by the block's own
path, so no other part of the graph sees a different tensor.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from vdeploy.graph_passes.rules.base import static_shape

ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div"})
SHAPE_ONLY = frozenset({"Identity", "Transpose", "Squeeze", "Unsqueeze", "Reshape", "Flatten"})


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


def _attr_ints(node: ir.Node, name: str) -> list[int] | None:
    attr = node.attributes.get(name)
    return None if attr is None else list(attr.as_ints())


def _attr_int(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_int()


def _axes(node: ir.Node, rank: int) -> list[int] | None:
    """Squeeze/Unsqueeze axes (input from opset 13, attribute before), normalised to `rank`."""
    axes = ints(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else _attr_ints(node, "axes")
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


class BackwardTrace:
    """From the attention inputs back to the projections: consumers first (reverse topological order), so every
    contribution to a value is known before its producer is handled."""

    def __init__(self, trace: Trace, order: dict) -> None:
        self.trace, self.order = trace, order
        self.wanted: dict = defaultdict(list)  # value -> [(Cut, covered indices | None for all)]
        self.heap: list = []

    def feed(self, node: ir.Node, index: int, cut: Cut, covered: frozenset | None = None) -> None:
        value = node.inputs[index]
        if value is None:
            raise Refused(f"{node.op_type} {node.name}: missing input {index}")
        if is_constant(value):
            if covered is not None:
                raise Refused(f"{node.op_type} {node.name}: slices a constant along the heads")
            self.trace.slices.append((node, index, cut.axis, cut.kept))
            return
        producer = value.producer()
        if producer is None:
            raise Refused(f"heads reach the graph input {value.name}")
        self.wanted[value].append((cut, covered))
        heapq.heappush(self.heap, (-self.order[producer], id(producer), producer))

    def run(self) -> None:
        while self.heap:
            _, _, node = heapq.heappop(self.heap)
            if node in self.trace.nodes:
                continue
            self.trace.nodes.add(node)
            cuts = {}
            for out in node.outputs:
                if out in self.wanted:
                    cuts[out.index()] = self.trace.cuts[out] = merge(out, self.wanted[out])
                elif out.uses():
                    raise Refused(f"{out.name} is used outside the attention block")
            self.step(node, cuts)

    def step(self, node: ir.Node, cuts: dict) -> None:
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            raise Refused(f"{node.domain}::{op} on the path to the projection")
        if op == "Split":
            return self.split(node, cuts)
        (cut,) = cuts.values()
        out = node.outputs[0]
        if op == "Identity":
            self.feed(node, 0, cut)
        elif op == "Transpose":
            perm = _attr_ints(node, "perm") or list(reversed(range(len(shape_of(out)))))
            self.feed(node, 0, cut.on(perm[cut.axis]))
        elif op == "Squeeze":
            rank = len(shape_of(node.inputs[0]))
            axes = _axes(node, rank)
            if axes is None:
                axes = [i for i, d in enumerate(shape_of(node.inputs[0])) if d == 1]
            self.feed(node, 0, cut.on([i for i in range(rank) if i not in axes][cut.axis]))
        elif op == "Unsqueeze":
            rank = len(shape_of(out))
            axes = _axes(node, rank) or []
            if cut.axis in axes:
                raise Refused(f"Unsqueeze {node.name} inserts the head axis")
            self.feed(node, 0, cut.on([i for i in range(rank) if i not in axes].index(cut.axis)))
        elif op in ("Reshape", "Flatten"):
            mapped = reshape_map(shape_of(out), cut, shape_of(node.inputs[0]))
            self.feed(node, 0, mapped)
            if op == "Reshape":
                reshape_entry(self.trace, node, cut, mapped)
        elif op == "Slice":
            self.slice(node, cut)
        elif op == "Gather":
            self.gather(node, cut)
        elif op in ELEMENTWISE:
            for index, cut_in in broadcast_inputs(node, cut):
                self.feed(node, index, cut_in)
        elif op == "Expand":
            self.expand(node, cut)
        elif op in ("MatMul", "Gemm"):
            projection(self.trace, node, cut, role="qkv")
        else:
            raise Refused(f"{op} {node.name} between the projection and the attention is not supported")

    def slice(self, node: ir.Node, cut: Cut) -> None:
        data = shape_of(node.inputs[0])
        starts, ends = ints(node.inputs[1]), ints(node.inputs[2])
        axes = ints(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] is not None else None
        steps = ints(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else None
        if starts is None or ends is None or (len(node.inputs) > 3 and axes is None):
            raise Refused(f"Slice {node.name}: bounds are not constants")
        axes = [a % len(data) for a in (axes if axes is not None else range(len(starts)))]
        if cut.axis not in axes:
            return self.feed(node, 0, cut.on(cut.axis, data[cut.axis]))
        i = axes.index(cut.axis)
        if steps is not None and steps[i] != 1:
            raise Refused(f"Slice {node.name}: strided along the heads")
        n = data[cut.axis]
        start, end = (min(max(x + n if x < 0 else x, 0), n) for x in (starts[i], ends[i]))
        self.feed(node, 0, Cut(cut.axis, n, tuple(start + k for k in cut.kept)), frozenset(range(start, end)))

        def bounds(trace: Trace) -> None:
            kept = trace.cuts[node.inputs[0]].kept
            trace.entries.append((node, 1, i, sum(k < start for k in kept)))
            trace.entries.append((node, 2, i, sum(k < end for k in kept)))

        self.trace.deferred.append(bounds)

    def split(self, node: ir.Node, cuts: dict) -> None:
        data = shape_of(node.inputs[0])
        axis = _attr_int(node, "axis", 0) % len(data)
        sizes = ints(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
        sizes = sizes or _attr_ints(node, "split") or _even_split(data[axis], len(node.outputs))
        offsets = [sum(sizes[:j]) for j in range(len(sizes))]
        for j, cut in cuts.items():
            if cut.axis != axis:
                self.feed(node, 0, cut.on(cut.axis, data[cut.axis]))
            else:
                covered = frozenset(range(offsets[j], offsets[j] + sizes[j]))
                self.feed(node, 0, Cut(axis, data[axis], tuple(offsets[j] + k for k in cut.kept)), covered)

        def new_sizes(trace: Trace) -> None:
            cut = trace.cuts[node.inputs[0]]
            if cut.axis != axis:
                return
            kept = set(cut.kept)
            counts = [sum(o + k in kept for k in range(s)) for o, s in zip(offsets, sizes)]
            if len(node.inputs) > 1 and node.inputs[1] is not None:
                for j, count in enumerate(counts):
                    trace.entries.append((node, 1, j, count))
            elif node.attributes.get("split") is not None:
                node.attributes["split"] = ir.AttrInt64s("split", counts)
            else:  # opset 18 num_outputs: an explicit sizes input instead
                node.attributes.pop("num_outputs", None)
                node.resize_inputs(2)
                node.replace_input_with(1, constant(node.graph, f"{node.name}_split_pruned", np.array(counts)))

        self.trace.deferred.append(new_sizes)

    def gather(self, node: ir.Node, cut: Cut) -> None:
        data, indices = node.inputs[0], node.inputs[1]
        if ints(indices) is None:
            raise Refused(f"Gather {node.name}: indices are not constant")
        g = _attr_int(node, "axis", 0) % len(shape_of(data))
        r = len(indices.const_value.shape)
        if g <= cut.axis < g + r:
            raise Refused(f"Gather {node.name} indexes the head axis")
        axis = cut.axis if cut.axis < g else cut.axis - r + 1
        self.feed(node, 0, cut.on(axis, shape_of(data)[axis]))

    def expand(self, node: ir.Node, cut: Cut) -> None:
        shape = ints(node.inputs[1])
        if shape is None:
            raise Refused(f"Expand {node.name}: shape is not constant")
        for index, cut_in in broadcast_inputs(node, cut, inputs=(0,)):
            self.feed(node, index, cut_in)
        position = cut.axis - (len(shape_of(node.outputs[0])) - len(shape))
        if position >= 0 and shape[position] == cut.size:
            self.trace.entries.append((node, 1, position, len(cut.kept)))


def _even_split(n: int, parts: int) -> list[int]:
    size = -(-n // parts)
    return [min(size, n - size * j) for j in range(parts)]


def merge(value: ir.Value, wanted: list) -> Cut:
    """One cut from every consumer's: the union of what they keep, plus what no consumer reads (kept as it is)."""
    axes = {(cut.axis, cut.size) for cut, _ in wanted}
    if len(axes) != 1:
        raise Refused(f"{value.name}: heads reach it on different axes")
    ((axis, size),) = axes
    kept, covered = set(), set()
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
    if entry == 0 and not _attr_int(node, "allowzero", 0):
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
    if index != 0 or (gemm and _attr_int(node, "transA", 0)):
        raise Refused(f"{node.op_type} {node.name}: heads arrive on the weight side")
    w = weight.const_value.shape.numpy()
    value = node.outputs[0] if role == "qkv" else node.inputs[0]
    if cut.axis != len(shape_of(value)) - 1:
        raise Refused(f"{node.op_type} {node.name}: heads are not on the projection's channel axis")
    trans_b = gemm and _attr_int(node, "transB", 0)
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


def trace_forward(trace: Trace, y: ir.Value, cut: Cut) -> None:
    """From the attention output along its single chain of consumers to the output projection."""
    value = y
    while True:
        uses = list(value.uses())
        if len(uses) != 1 or value.is_graph_output():
            raise Refused(f"{value.name}: the attention output is used by {len(uses)} nodes, expected a single chain")
        node, index = uses[0]
        op = node.op_type
        trace.nodes.add(node)
        if node.domain not in ("", "ai.onnx"):
            raise Refused(f"{node.domain}::{op} between the attention and the output projection")
        if op in ("MatMul", "Gemm"):
            return projection(trace, node, cut, role="out", index=index)
        out = node.outputs[0]
        if op == "Identity":
            new = cut
        elif op == "Transpose":
            perm = _attr_ints(node, "perm") or list(reversed(range(len(shape_of(value)))))
            new = cut.on(perm.index(cut.axis))
        elif op == "Squeeze":
            axes = _axes(node, len(shape_of(value))) or [i for i, d in enumerate(shape_of(value)) if d == 1]
            if cut.axis in axes:
                raise Refused(f"Squeeze {node.name} removes the head axis")
            new = cut.on([i for i in range(len(shape_of(value))) if i not in axes].index(cut.axis))
        elif op == "Unsqueeze":
            axes = _axes(node, len(shape_of(out))) or []
            new = cut.on([i for i in range(len(shape_of(out))) if i not in axes][cut.axis])
        elif op in ("Reshape", "Flatten"):
            new = reshape_map(shape_of(value), cut, shape_of(out))
            if op == "Reshape":
                reshape_entry(trace, node, new, cut)
        elif op in ELEMENTWISE:
            if shape_of(out) != shape_of(value):
                raise Refused(f"{op} {node.name} broadcasts the attention output")
            for i, cut_in in broadcast_inputs(node, cut):
                if i != index:
                    if not is_constant(node.inputs[i]):
                        raise Refused(f"{op} {node.name}: its other input is not a constant")
                    trace.slices.append((node, i, cut_in.axis, cut_in.kept))
            new = cut
        else:
            raise Refused(f"{op} {node.name} between the attention and the output projection is not supported")
        trace.cuts[out] = new
        value, cut = out, new


def check_private(trace: Trace, attention: ir.Node) -> None:
    """Every value that changes shape is read only by the block's own path."""
    allowed = trace.nodes | {attention}
    for value in trace.cuts:
        for user, _ in value.uses():
            if user not in allowed:
                raise Refused(f"{value.name} is also read by {user.op_type} {user.name}, outside the block")
        if value.is_graph_output():
            raise Refused(f"{value.name} is a graph output")
