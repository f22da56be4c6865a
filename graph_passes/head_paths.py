"""The two walks over one attention block: back from Q/K/V to the projections, forward from Y to the output one.

internal Attention(Q, K, V[, bias]) -> BackwardTrace: from Q/K/V (head axis 1), consumers first, through Identity /
Transpose / Squeeze / Unsqueeze / Reshape / Flatten / Slice / Split / Gather / Expand / Add-Sub-Mul-Div to the q/k/v
projection MatMul/Gemm (or constants) -> trace_forward: from Y along its single chain of consumers (shape-only and
elementwise-with-constant ops) to the output projection -> the edits, in a Trace (head_trace.py); else Refused.
"""

from __future__ import annotations

import heapq
from collections import defaultdict

import numpy as np
import onnx_ir as ir

from vdeploy.graph_passes.head_trace import (
    ELEMENTWISE,
    Cut,
    Refused,
    Trace,
    attr_int,
    attr_ints,
    axes_of,
    broadcast_inputs,
    constant,
    ints,
    is_constant,
    merge,
    projection,
    reshape_entry,
    reshape_map,
    shape_of,
)


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
        if producer not in self.order:
            raise Refused(f"{value.name} is computed inside a subgraph")
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
            perm = attr_ints(node, "perm") or list(reversed(range(len(shape_of(out)))))
            self.feed(node, 0, cut.on(perm[cut.axis]))
        elif op == "Squeeze":
            rank = len(shape_of(node.inputs[0]))
            axes = axes_of(node, rank)
            if axes is None:
                axes = [i for i, d in enumerate(shape_of(node.inputs[0])) if d == 1]
            self.feed(node, 0, cut.on([i for i in range(rank) if i not in axes][cut.axis]))
        elif op == "Unsqueeze":
            rank = len(shape_of(out))
            axes = axes_of(node, rank) or []
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
        axis = attr_int(node, "axis", 0) % len(data)
        sizes = ints(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
        sizes = sizes or attr_ints(node, "split") or _even_split(data[axis], len(node.outputs))
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
        g = attr_int(node, "axis", 0) % len(shape_of(data))
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


def trace_forward(trace: Trace, y: ir.Value, cut: Cut) -> None:
    """From the attention output along its single chain of consumers to the output projection."""
    value = y
    while True:
        uses = list(value.uses())
        if len(uses) != 1 or value.is_graph_output():
            raise Refused(f"{value.name}: the attention output is used by {len(uses)} nodes, expected a single chain")
        node, index = uses[0]
        op = node.op_type
        if node.graph is not y.producer().graph:
            raise Refused(f"{value.name} is read inside a subgraph")
        trace.nodes.add(node)
        if node.domain not in ("", "ai.onnx"):
            raise Refused(f"{node.domain}::{op} between the attention and the output projection")
        if op in ("MatMul", "Gemm"):
            return projection(trace, node, cut, role="out", index=index)
        out = node.outputs[0]
        if op == "Identity":
            new = cut
        elif op == "Transpose":
            perm = attr_ints(node, "perm") or list(reversed(range(len(shape_of(value)))))
            new = cut.on(perm.index(cut.axis))
        elif op == "Squeeze":
            axes = axes_of(node, len(shape_of(value))) or [i for i, d in enumerate(shape_of(value)) if d == 1]
            if cut.axis in axes:
                raise Refused(f"Squeeze {node.name} removes the head axis")
            new = cut.on([i for i in range(len(shape_of(value))) if i not in axes].index(cut.axis))
        elif op == "Unsqueeze":
            axes = axes_of(node, len(shape_of(out))) or []
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
