"""Softmax, both directions (opset >= 13 semantics: one axis).

- softmax_fusion: Div(e, ReduceSum(e, [a])) with e = Exp(Sub(x, ReduceMax(x, [a]))) or e = Exp(x)
  =>  Softmax(x, axis=a)   (the unshifted form is fused too: Softmax is the numerically safer spelling of it)
- softmax_decomposition: Softmax(x, axis=a)  =>  ReduceMax -> Sub -> Exp -> ReduceSum -> Div  (max-subtracted,
  so large logits do not overflow Exp)
"""

from __future__ import annotations

from onnxscript.rewriter.pattern import MatchResult, OrValue, RewriteRule

from vdeploy.graph_passes.ops import OpId
from vdeploy.graph_passes.rules.base import FLOAT_TYPES, NOT_FLOAT, RuleSpec, axes_attr, int_attr, opset_of, reduce

SOFTMAX_OPSET = 13  # one-axis semantics; before 13 Softmax flattened the trailing axes


def _exp_normalized(op, x):
    shifted = op.Sub(x, op.ReduceMax(x, _allow_other_inputs=True, _outputs=["peak"]))
    e = OrValue([op.Exp(shifted), op.Exp(x)], tag_var="shifted", tag_values=[True, False])
    return op.Div(e, op.ReduceSum(e, _allow_other_inputs=True, _outputs=["total"]))


def _one_axis(node) -> int | None:
    axes = axes_attr(node)
    if axes is None or len(axes) != 1 or int_attr(node, "keepdims", 1) != 1:
        return None
    return axes[0]


def _normalize_axis(axis: int, x) -> int | None:
    """The axis as a negative index (needs the rank only for a non-negative axis)."""
    if axis < 0:
        return axis
    return axis - x.shape.rank() if x.shape is not None else None


def _fused_axis(x, total, peak, shifted) -> int | None:
    axis = _one_axis(total.producer())
    if axis is None:
        return None
    axis = _normalize_axis(axis, x)
    if shifted:
        peak_axis = _one_axis(peak.producer())
        if peak_axis is None or _normalize_axis(peak_axis, x) != axis:
            return None
    return axis


def _check_fuse(context, x, total, shifted, peak=None, **_) -> MatchResult:
    result = MatchResult()
    if x.dtype not in FLOAT_TYPES:
        return result.fail(NOT_FLOAT, x)
    if opset_of(x) < SOFTMAX_OPSET:
        return result.fail(f"Softmax has one-axis semantics from opset {SOFTMAX_OPSET} only", x)
    if _fused_axis(x, total, peak, shifted) is None:
        return result.fail("max and sum are not over one and the same axis (keepdims=1)", total)
    return result


def _fuse(op, x, total, shifted, peak=None, **_):
    return op.Softmax(x, axis=_fused_axis(x, total, peak, shifted))


def _softmax_node(op, x):
    return op.Softmax(x, _outputs=["y"])


def _check_decompose(context, x, y, **_) -> MatchResult:
    result = MatchResult()
    if opset_of(x) < SOFTMAX_OPSET:
        return result.fail(f"Softmax before opset {SOFTMAX_OPSET} flattens; not decomposed", x)
    return result


def _decompose(op, x, y, **_):
    axes, opset = [int_attr(y.producer(), "axis", -1)], opset_of(x)
    e = op.Exp(op.Sub(x, reduce(op, "ReduceMax", x, axes, opset)))
    return op.Div(e, reduce(op, "ReduceSum", e, axes, opset))


SOFTMAX = RuleSpec(
    name="softmax",
    big_op=OpId("", "Softmax"),
    fuse_rules=(RewriteRule(_exp_normalized, _fuse, _check_fuse, name="softmax_fusion"),),
    decompose_rules=(RewriteRule(_softmax_node, _decompose, _check_decompose, name="softmax_decomposition"),),
)
