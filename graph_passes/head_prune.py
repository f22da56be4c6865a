"""Attention-head pruning at graph level, on the normalised attention op: any exporter's shape, any model.

onnx.ModelProto -> attention normalised by the legalization rules (attention_normalize.py) -> blocks attn0, attn1 ...
in topological order -> per block of the plan: trace (head_paths.py), then slice (head_trace.py) the q/k/v projection
columns and biases, the output projection's rows, the per-head bias [.., H, Sq, Skv], the shape constants (H -> H')
-> attention lowered back to MatMul/Softmax/MatMul (attention_lower.py's decomposition; legalization captures it again)
-> PruneResult: a standard onnx.ModelProto, heads kept/removed per block, params and FLOPs removed, refusals.

Public (stable block ids, so a plan is JSON and replays on a fresh export of the same model):
  attention_blocks(model) -> [AttentionBlock]     ids, head counts, and why a block cannot be pruned (or None)
  prune_heads(model, keep) -> PruneResult         keep: {block id: heads kept}; blocks not named stay as they are
  with_head_masks(model) -> (model, {id: input})  a [1, H, 1, 1] mask input per block, to measure importance
Removing head h equals zeroing its output before the output projection (what a mask of 0 does): exact.
A block that cannot be traced safely is refused (reason in PruneResult.refused) and left unpruned.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from vdeploy.errors import UsageError
from vdeploy.graph_passes.head_paths import BackwardTrace, trace_forward
from vdeploy.graph_passes.head_trace import Cut, Refused, Trace, check_private, constant, shape_of
from vdeploy.graph_passes.legalize import legalize
from vdeploy.graph_passes.rules.attention import ATTENTION, ATTENTION_NORMALIZE
from vdeploy.graph_passes.rules.attention_normalize import ATTENTION_OP
from vdeploy.graph_passes.rules.base import INTERNAL_DOMAIN

MASK_PREFIX = "vdeploy_head_mask_"


@dataclass(frozen=True)
class AttentionBlock:
    id: str  # attn0, attn1, ... in topological order of the normalised graph
    node: str  # the internal Attention node's name
    heads: int
    head_dim: int
    tokens: tuple[int, int]  # (Sq, Skv)
    refused: str | None = None  # why its heads cannot be removed, or None


@dataclass(frozen=True)
class BlockPruned:
    id: str
    node: str
    heads: int
    kept: tuple[int, ...]
    removed: tuple[int, ...]
    params_removed: int
    flops_removed: int  # per inference: projections + attention scores and values
    bias: str  # per-head bias: "none", "sliced" (constants cut) or "gathered" (a Gather picks the kept heads)
    projections: tuple[str, ...] = ()  # the weights sliced

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "node": self.node,
            "heads": self.heads,
            "kept": list(self.kept),
            "removed": list(self.removed),
            "params_removed": self.params_removed,
            "flops_removed": self.flops_removed,
            "bias": self.bias,
            "projections": list(self.projections),
        }


@dataclass(frozen=True)
class PruneResult:
    model: onnx.ModelProto = field(repr=False)
    blocks: tuple[AttentionBlock, ...]
    pruned: tuple[BlockPruned, ...]
    refused: Mapping[str, str]  # block id -> reason it was left unpruned (only blocks the plan asked to prune)

    heads_removed = property(lambda self: sum(len(b.removed) for b in self.pruned))
    params_removed = property(lambda self: sum(b.params_removed for b in self.pruned))
    flops_removed = property(lambda self: sum(b.flops_removed for b in self.pruned))

    def plan(self) -> dict[str, list[int]]:
        """{block id: heads kept} for every block, as applied: replays to the same graph."""
        pruned = {b.id: list(b.kept) for b in self.pruned}
        return {b.id: pruned.get(b.id, list(range(b.heads))) for b in self.blocks}


def attention_blocks(model: onnx.ModelProto) -> list[AttentionBlock]:
    """The model's attention blocks (as normalised), each probed by tracing the removal of its last head."""
    ir_model, blocks = _normalised(model)
    found = []
    for block_id, node in blocks:
        reason = None
        try:
            heads = _heads(node)
            if heads < 2:
                raise Refused("fewer than two heads (or a head count that is not static)")
            _trace(ir_model.graph, node, tuple(range(heads - 1)))
        except Refused as exc:
            reason = str(exc)
        found.append(_describe(block_id, node, reason))
    return found


def prune_heads(model: onnx.ModelProto, keep: Mapping[str, Sequence[int]]) -> PruneResult:
    """Remove every head not in keep[block] from the blocks keep names. Nothing removed: the model object as it came."""
    ir_model, blocks = _normalised(model)
    by_id = dict(blocks)
    _check_plan(keep, {block_id: _heads(node) for block_id, node in blocks})
    described = tuple(_describe(block_id, node) for block_id, node in blocks)
    wanted = {b: tuple(sorted(set(keep[b]))) for b in keep if len(set(keep[b])) < _heads(by_id[b])}
    if not wanted:
        return PruneResult(model, described, (), {})
    graph, fresh = ir_model.graph, _namer(ir_model.graph)
    pruned, refused = [], {}
    for block_id, kept in wanted.items():
        node = by_id[block_id]
        try:
            trace, bias = _trace(graph, node, kept)
        except Refused as exc:
            refused[block_id] = str(exc)
            continue
        pruned.append(_apply(graph, node, block_id, kept, trace, bias, fresh))
    if not pruned:  # every block asked for was refused: the graph as it came
        return PruneResult(model, described, (), refused)
    return PruneResult(_lowered(ir_model), described, tuple(pruned), refused)


def with_head_masks(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The model with Y_b * mask_b after every attention block b (mask_b: graph input [1, H, 1, 1], 1 keeps a head,
    0 removes its contribution) and {block id: mask input name}."""
    ir_model, blocks = _normalised(model)
    graph, masks = ir_model.graph, {}
    for block_id, node in blocks:
        y = node.outputs[0]
        mask = ir.Value(name=MASK_PREFIX + block_id, shape=ir.Shape([1, _heads(node), 1, 1]), type=y.type)
        graph.inputs.append(mask)
        uses = list(y.uses())
        mul = ir.node("Mul", [y, mask])
        masked = mul.outputs[0]
        masked.name, masked.type, masked.shape = f"{y.name}_masked", y.type, y.shape
        graph.insert_after(node, mul)
        for user, index in uses:
            user.replace_input_with(index, masked)
        masks[block_id] = mask.name
    return _lowered(ir_model), masks


# ---- internals ----------------------------------------------------------------------------------------------------


def _normalised(model: onnx.ModelProto) -> tuple[ir.Model, list[tuple[str, ir.Node]]]:
    ir_model = ir.serde.deserialize_model(model)
    legalize(ir_model, frozenset(), specs=(ATTENTION_NORMALIZE,))
    nodes = [n for n in ir_model.graph if n.domain == INTERNAL_DOMAIN and n.op_type == ATTENTION_OP]
    return ir_model, [(f"attn{i}", node) for i, node in enumerate(nodes)]


def _lowered(ir_model: ir.Model) -> onnx.ModelProto:
    """Internal attention back to MatMul/Softmax/MatMul; shapes re-inferred from scratch (the heads changed)."""
    legalize(ir_model, frozenset(), specs=(ATTENTION,))
    common_passes.RemoveUnusedOpsetsPass()(ir_model)
    proto = ir.serde.serialize_model(ir_model)
    del proto.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(proto)


def _dims(value: ir.Value) -> list[int]:
    """A rank-4 value's dims, 0 for a symbolic one (the normaliser guarantees rank 4)."""
    return [d if isinstance(d, int) else 0 for d in value.shape]


def _heads(node: ir.Node) -> int:
    return _dims(node.inputs[0])[1]


def _describe(block_id: str, node: ir.Node, refused: str | None = None) -> AttentionBlock:
    q, k = _dims(node.inputs[0]), _dims(node.inputs[1])
    return AttentionBlock(block_id, node.name, q[1], q[3], (q[2], k[2]), refused)


def _check_plan(keep: Mapping[str, Sequence[int]], heads: dict[str, int]) -> None:
    for block_id, kept in keep.items():
        if block_id not in heads:
            raise UsageError(
                f"no attention block {block_id!r} in the model",
                f"blocks: {', '.join(heads) or 'none found'} (vdeploy.graph_passes.head_prune.attention_blocks)",
            )
        bad = [h for h in kept if not isinstance(h, (int, np.integer)) or not 0 <= h < heads[block_id]]
        if bad or not kept:
            raise UsageError(
                f"block {block_id}: heads to keep must be 1 to {heads[block_id]} indices in 0..{heads[block_id] - 1}",
                f"got {list(kept)}",
            )


def _trace(graph: ir.Graph, node: ir.Node, kept: tuple[int, ...]) -> tuple[Trace, str]:
    """The edits that remove every head but `kept` from one block, and how its bias is handled. Tracing changes
    nothing, so a graph the walks did not foresee (an error inside them) is a refusal, not a half-pruned graph."""
    try:
        return _trace_block(graph, node, kept)
    except Refused:
        raise
    except (KeyError, IndexError, ValueError, TypeError, AttributeError, ZeroDivisionError) as exc:
        raise Refused(f"could not trace the block ({type(exc).__name__}: {exc})") from None


def _trace_block(graph: ir.Graph, node: ir.Node, kept: tuple[int, ...]) -> tuple[Trace, str]:
    order = {n: i for i, n in enumerate(graph)}
    cut = Cut(1, _heads(node), kept)
    trace = Trace()
    backward = BackwardTrace(trace, order)
    for index in range(3):
        backward.feed(node, index, cut)
    backward.run()
    trace.cuts[node.outputs[0]] = cut
    trace_forward(trace, node.outputs[0], cut)
    check_private(trace, node)
    bias = node.inputs[3] if len(node.inputs) > 3 else None
    if bias is None or len(shape_of(bias)) < 3 or shape_of(bias)[-3] == 1:
        return trace, "none"
    try:  # slice the bias at its constants when its producers are the block's own; else pick heads with a Gather
        sub = Trace()
        on_bias = BackwardTrace(sub, order)
        on_bias.feed(node, 3, cut.on(len(shape_of(bias)) - 3))
        on_bias.run()
        check_private(sub, node)
    except Refused:
        return trace, "gathered"
    trace.cuts.update(sub.cuts)
    trace.slices += sub.slices
    trace.entries += sub.entries
    trace.deferred += sub.deferred
    trace.nodes |= sub.nodes
    return trace, "sliced"


def _apply(graph, node, block_id, kept, trace: Trace, bias: str, fresh) -> BlockPruned:
    heads = _heads(node)
    (b, _, sq, dk), (_, _, skv, dv) = shape_of(node.inputs[0]), shape_of(node.inputs[2])
    removed = tuple(h for h in range(heads) if h not in kept)
    core = 2 * b * len(removed) * sq * skv * (dk + dv)  # scores and weighted values
    params = trace.params_removed()  # before the constants are replaced
    trace.apply(graph, fresh)
    if bias == "gathered":
        _gather_bias(graph, node, kept, fresh)
    return BlockPruned(
        block_id,
        node.name,
        heads,
        kept,
        removed,
        params,
        core + sum(p.flops_removed for p in trace.projections),
        bias,
        tuple(p.weight for p in trace.projections),
    )


def _gather_bias(graph: ir.Graph, node: ir.Node, kept: tuple[int, ...], fresh) -> None:
    bias = node.inputs[3]
    axis = len(bias.shape) - 3
    index = constant(graph, fresh("heads_kept"), np.array(kept, dtype=np.int64))
    gather = ir.node("Gather", [bias, index], {"axis": axis})
    out = gather.outputs[0]
    dims = list(bias.shape)
    dims[axis] = len(kept)
    out.name, out.type, out.shape = fresh(f"{bias.name}_heads"), bias.type, ir.Shape(dims)
    graph.insert_before(node, gather)
    node.replace_input_with(3, out)


def _namer(graph: ir.Graph):
    taken = {v.name for v in itertools.chain(graph.inputs, graph.initializers.values())}
    taken |= {v.name for n in graph for v in n.outputs}
    counter = itertools.count()

    def fresh(base: str) -> str:
        while True:
            name = f"{base}.pruned{next(counter)}"
            if name not in taken:
                taken.add(name)
                return name

    return fresh
