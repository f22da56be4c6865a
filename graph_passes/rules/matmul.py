"""The batched MatMul rank family: rank-4 (or higher) MatMul <-> Reshape to rank 3 -> MatMul -> Reshape back.

MatMul[B,H,S,K] x [B,H,K,N] or [K,N]  <->  Reshape [B*H,S,K] -> MatMul -> Reshape [B,H,S,N]

Op sets hold op names, not ranks, so the capability is a pseudo-op: a profile lists ``vdeploy.capability::MatMulRank4``
when its backend runs MatMul whose inputs have rank 4 or more (all batch dims). Without it, legalization splits such
MatMuls into rank 3 (many NPU compilers take at most one batch dimension). With it, the fuse rule folds a
Reshape/MatMul/Reshape sandwich that only flattens batch dims back into one MatMul. Both directions need static
shapes (edge compilers need them anyway); a MatMul with unknown dims is left as it is. Broadcast batch dims
([3,1,3,4] x [1,2,4,2]) are split too: a side whose batch dims are all 1 becomes 2-D, else it is Expanded.
"""

from __future__ import annotations

import math

import onnx_ir as ir
from onnxscript.rewriter import pattern

from vdeploy.graph_passes.ops import CAPABILITY_DOMAIN, MATMUL_RANK4, OpId  # noqa: F401 (re-exported)
from vdeploy.graph_passes.rules.base import RuleSpec, const, static_shape


def _reshape(op, x: ir.Value, dims) -> ir.Value:
    """Reshape to static dims, the new value typed and shaped for the families that run after this one."""
    out = op.Reshape(x, const(op, list(dims), dtype=ir.DataType.INT64))
    out.dtype, out.shape = x.dtype, ir.Shape(dims)
    return out


# --- decompose: rank-4 MatMul -> rank 3 -------------------------------------------------------------------------


def _batched_pattern(op, a, b):
    """MatMul(a[*la,S,K], b[*lb,K,N] | b[K,N]) -> Reshape(MatMul(a as [n,S,K], b as [n,K,N] | [K,N]), [*lead,S,N])
    where lead = broadcast(la, lb); a side whose batch dims are all 1 is flattened to 2-D, not expanded."""
    return op.MatMul(a, b)


def _lead(sa, sb) -> tuple[int, ...] | None:
    """The broadcast batch dims of two MatMul operands (numpy rules), or None when they do not broadcast."""
    la, lb = sa[:-2], sb[:-2]
    width = max(len(la), len(lb))
    la, lb = (1,) * (width - len(la)) + la, (1,) * (width - len(lb)) + lb
    if any(x != y and 1 not in (x, y) for x, y in zip(la, lb)):
        return None
    return tuple(max(x, y) for x, y in zip(la, lb))


def _batched_check(context, a, b, **_) -> bool:
    sa, sb = static_shape(a), static_shape(b)
    if sa is None or sb is None or max(len(sa), len(sb)) < 4:
        return False
    return min(len(sa), len(sb)) == 1 or _lead(sa, sb) is not None  # a 1-D side: matrix-vector, no broadcast


def _flat_operand(op, x: ir.Value, shape, lead, n: int) -> ir.Value:
    """x[*lx, R, C] as [R, C] (batch dims all 1), [n, R, C] (batch dims = lead) or expanded to [*lead, R, C] first."""
    if math.prod(shape[:-2]) == 1:
        return x if len(shape) == 2 else _reshape(op, x, shape[-2:])
    if tuple((1,) * (len(lead) - len(shape[:-2])) + tuple(shape[:-2])) != tuple(lead):
        full = [*lead, *shape[-2:]]
        dtype, x = x.dtype, op.Expand(x, const(op, full, dtype=ir.DataType.INT64))
        x.dtype, x.shape = dtype, ir.Shape(full)
    return _reshape(op, x, [n, *shape[-2:]])


def _vector_rewrite(op, a, b, sa, sb):
    """One side 1-D: a[*lead,S,K] x b[K] -> [n,S,K] x b -> [n,S] -> [*lead,S]; a[K] x b[*lead,K,N] likewise."""
    if len(sb) == 1:
        y = op.MatMul(_reshape(op, a, [math.prod(sa[:-2]), *sa[-2:]]), b)
        y.dtype, y.shape = a.dtype, ir.Shape([math.prod(sa[:-2]), sa[-2]])
        return _reshape(op, y, [*sa[:-2], sa[-2]])
    y = op.MatMul(a, _reshape(op, b, [math.prod(sb[:-2]), *sb[-2:]]))
    y.dtype, y.shape = b.dtype, ir.Shape([math.prod(sb[:-2]), sb[-1]])
    return _reshape(op, y, [*sb[:-2], sb[-1]])


def _batched_rewrite(op, a, b, **_):
    sa, sb = static_shape(a), static_shape(b)
    if min(len(sa), len(sb)) == 1:
        return _vector_rewrite(op, a, b, sa, sb)
    lead = _lead(sa, sb)
    n = math.prod(lead)
    a3, b3 = _flat_operand(op, a, sa, lead, n), _flat_operand(op, b, sb, lead, n)
    rows = n if len(static_shape(a3) or ()) == 3 or len(static_shape(b3) or ()) == 3 else None
    y3 = op.MatMul(a3, b3)
    y3.dtype, y3.shape = a.dtype, ir.Shape([*([rows] if rows else []), sa[-2], sb[-1]])
    return _reshape(op, y3, [*lead, sa[-2], sb[-1]])


matmul_rank4_to_rank3 = pattern.RewriteRule(
    _batched_pattern, _batched_rewrite, _batched_check, name="matmul_rank4_to_rank3"
)


# --- fuse: Reshape / rank-3 MatMul / Reshape that only flattens batch dims -> one rank-4 MatMul -----------------


def _flattened_pattern(op, a, a_shape, b, b_shape, out_shape):
    """Reshape(MatMul(Reshape(a,[n,S,K]), Reshape(b,[n,K,N]) | b[K,N]), [*lead,S,N]) -> MatMul(a, b), a rank >= 4."""
    b3 = pattern.OrValue([op.Reshape(b, b_shape), b], tag_var="b_form", tag_values=["reshaped", "plain"])
    product = op.MatMul(op.Reshape(a, a_shape, _outputs=["a3"]), b3, _outputs=["y3"])
    return op.Reshape(product, out_shape, _outputs=["y"])


def _flattened_check(context, a, b, a3, y3, y, b_form, **_) -> bool:
    sa, sb, sa3, sy3, sy = (static_shape(v) for v in (a, b, a3, y3, y))
    if None in (sa, sb, sa3, sy3, sy) or len(sa) < 4:
        return False
    lead, n = sa[:-2], math.prod(sa[:-2])
    if sa3 != (n, *sa[-2:]) or sy3 != (n, sa[-2], sy3[-1]) or sy != (*lead, *sy3[-2:]):
        return False
    if b_form == "plain":
        return len(sb) == 2
    return len(sb) == len(sa) and sb[:-2] == lead and sb[-1] == sy3[-1]


def _flattened_rewrite(op, a, b, **_):
    return op.MatMul(a, b)


matmul_rank3_to_rank4 = pattern.RewriteRule(
    _flattened_pattern, _flattened_rewrite, _flattened_check, name="matmul_rank3_to_rank4"
)


BATCHED_MATMUL = RuleSpec(
    name="batched_matmul",
    big_op=MATMUL_RANK4,
    fuse_rules=(matmul_rank3_to_rank4,),
    decompose_rules=(matmul_rank4_to_rank3,),
)
