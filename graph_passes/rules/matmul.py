"""The batched MatMul rank family: rank-4 (or higher) MatMul <-> Reshape to rank 3 -> MatMul -> Reshape back.

MatMul[B,H,S,K] x [B,H,K,N] or [K,N]  <->  Reshape [B*H,S,K] -> MatMul -> Reshape [B,H,S,N]

Op sets hold op names, not ranks, so the capability is a pseudo-op: a profile lists ``vdeploy.capability::MatMulRank4``
when its backend runs MatMul whose inputs have rank 4 or more (all batch dims). Without it, legalization splits such
MatMuls into rank 3 (many NPU compilers take at most one batch dimension). With it, the fuse rule folds a
Reshape/MatMul/Reshape sandwich that only flattens batch dims back into one MatMul. Both directions need static
shapes (edge compilers need them anyway); a MatMul with unknown or broadcast batch dims is left as it is.
"""

from __future__ import annotations

import math

import onnx_ir as ir
from onnxscript.rewriter import pattern

from vdeploy.graph_passes.rules.base import RuleSpec, const, static_shape
from vdeploy.targets import OpId

CAPABILITY_DOMAIN = "vdeploy.capability"  # pseudo-ops: capabilities a profile declares, never nodes in a graph
MATMUL_RANK4 = OpId(CAPABILITY_DOMAIN, "MatMulRank4")


def _reshape(op, x: ir.Value, dims) -> ir.Value:
    """Reshape to static dims, the new value typed and shaped for the families that run after this one."""
    out = op.Reshape(x, const(op, list(dims), dtype=ir.DataType.INT64))
    out.dtype, out.shape = x.dtype, ir.Shape(dims)
    return out


# --- decompose: rank-4 MatMul -> rank 3 -------------------------------------------------------------------------

def _batched_pattern(op, a, b):
    """MatMul(a[*lead,S,K], b[*lead,K,N] | b[K,N]) -> Reshape(MatMul(a as [n,S,K], b as [n,K,N] | b), [*lead,S,N])."""
    return op.MatMul(a, b)


def _batched_check(context, a, b, **_) -> bool:
    sa, sb = static_shape(a), static_shape(b)
    if sa is None or sb is None or len(sa) < 4:
        return False
    return len(sb) == 2 or (len(sb) == len(sa) and sb[:-2] == sa[:-2])


def _batched_rewrite(op, a, b, **_):
    sa, sb = static_shape(a), static_shape(b)
    lead, n = sa[:-2], math.prod(sa[:-2])
    a3 = _reshape(op, a, [n, *sa[-2:]])
    b3 = b if len(sb) == 2 else _reshape(op, b, [n, *sb[-2:]])
    y3 = op.MatMul(a3, b3)
    y3.dtype, y3.shape = a.dtype, ir.Shape([n, sa[-2], sb[-1]])
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
