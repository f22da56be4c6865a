"""LayerNorm, both directions.

Fuse (target has LayerNormalization, opset >= 17):
- layer_norm_fusion: ReduceMean(x) -> Sub -> Pow 2 | Mul self -> ReduceMean -> Add eps -> Sqrt -> Div | Mul Reciprocal
  (axes as input or attribute, over the trailing axes)  =>  LayerNormalization(x, ones, axis=-k, epsilon)
- layer_norm_scale_fusion: Mul(LayerNormalization(x, s, b), gamma const)  =>  LayerNormalization(x, s*gamma, b*gamma)
- layer_norm_bias_fusion: Add(LayerNormalization(x, s, b), beta const)  =>  LayerNormalization(x, s, b+beta)
  Together they cover the legacy exporter below opset 17 and hand-written norms (scale/bias in either operand order).
Decompose (target without it):
- layer_norm_decomposition: LayerNormalization(x, s, b)  =>  ReduceMean -> Sub -> Mul -> ReduceMean -> Add -> Sqrt
  -> Div [-> Mul s] [-> Add b]  (Cast to float and back around the statistics when stash_type asks for it; a unit
  scale / zero bias is not emitted, so decompose(fuse(chain)) gives the chain back).

onnxscript's shipped LayerNormFusion is not used: it matches axes-as-input ReduceMean over [-1] only, needs the
scale Mul, passes state from check to rewrite on self, and its bias rule does not check the bias broadcasts into
the normalized shape (a per-token Add would be folded wrongly).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter.pattern import MatchResult, OrValue

from vdeploy.graph_passes.ops import OpId
from vdeploy.graph_passes.rules.base import (
    FLOAT_TYPES,
    NOT_FLOAT,
    RuleSpec,
    axes_attr,
    const,
    int_attr,
    opset_of,
    reduce,
    rules,
    scalar,
    trailing_axes,
)

# ---- shared facts, recomputed by check and rewrite (no state passes between them) ----------------------------


def _chain_axes(x: ir.Value, mean: ir.Value, var: ir.Value) -> tuple[int, tuple[int, ...]] | None:
    """(k, normalized shape) when both ReduceMeans keep dims over the same trailing k axes of a static-tail x."""
    m, v = mean.producer(), var.producer()
    if int_attr(m, "keepdims", 1) != 1 or int_attr(v, "keepdims", 1) != 1 or x.shape is None:
        return None
    rank = x.shape.rank()
    mean_axes, var_axes = axes_attr(m), axes_attr(v)
    if mean_axes is None or var_axes is None:
        return None
    k = trailing_axes(mean_axes, rank)
    if k is None or k != trailing_axes(var_axes, rank) or rank < k:
        return None
    tail = tuple(x.shape)[rank - k :]
    return (k, tail) if all(isinstance(d, int) for d in tail) else None


def _ln_tail(ln: ir.Node) -> tuple[int, tuple[int, ...]] | None:
    """(k, normalized shape) of a LayerNormalization node, from x's static tail or else from a rank-k scale."""
    x, scale = ln.inputs[0], ln.inputs[1]
    axis = int_attr(ln, "axis", -1)
    rank = x.shape.rank() if x.shape is not None else None
    if axis < 0:
        k = -axis
    elif rank is not None:
        k = rank - axis
    else:
        return None
    if rank is not None and all(isinstance(d, int) for d in tuple(x.shape)[rank - k :]):
        return k, tuple(x.shape)[rank - k :]
    if scale.const_value is not None and scale.const_value.numpy().ndim == k:
        return k, tuple(scale.const_value.numpy().shape)
    return None


def _fold_into_tail(operand: ir.Value, ln: ir.Node) -> np.ndarray | None:
    """The constant `operand` broadcast to the LN's normalized shape, when doing so keeps the output shape."""
    tail = _ln_tail(ln)
    x = ln.inputs[0]
    if tail is None or operand.const_value is None or x.shape is None:
        return None
    k, shape = tail
    array = operand.const_value.numpy()
    if array.ndim > x.shape.rank():
        return None  # would add leading dims to the output
    lead = array.shape[: max(array.ndim - k, 0)]
    if any(d != 1 for d in lead):
        return None  # varies outside the normalized axes (e.g. a per-token term)
    try:
        return np.broadcast_to(array.reshape(array.shape[len(lead) :]), shape)
    except ValueError:
        return None


def _const_params(ln: ir.Node) -> bool:
    return all(v.const_value is not None for v in ln.inputs[1:] if v is not None)


# ---- fuse: the normalization chain -> LayerNormalization ------------------------------------------------------


def _chain(op, x, epsilon):
    mean = op.ReduceMean(x, _allow_other_inputs=True, _outputs=["mean"])
    dev = op.Sub(x, mean)
    var = op.ReduceMean(OrValue([op.Pow(dev, 2.0), op.Mul(dev, dev)]), _allow_other_inputs=True, _outputs=["var"])
    std = op.Sqrt(OrValue([op.Add(var, epsilon), op.Add(epsilon, var)]))
    return dev, std


def _chain_div(op, x, epsilon):
    dev, std = _chain(op, x, epsilon)
    return op.Div(dev, std)


def _chain_recip(op, x, epsilon):
    dev, std = _chain(op, x, epsilon)
    return op.Mul(dev, op.Reciprocal(std))


def _chain_recip_swapped(op, x, epsilon):
    dev, std = _chain(op, x, epsilon)
    return op.Mul(op.Reciprocal(std), dev)


def _check_chain(context, x, epsilon, mean, var, **_) -> MatchResult:
    result = MatchResult()
    if x.dtype not in FLOAT_TYPES:
        return result.fail(NOT_FLOAT, x)
    if _chain_axes(x, mean, var) is None:
        return result.fail("mean/variance are not over the same trailing axes of a static-tail input", x)
    if scalar(epsilon) is None:
        return result.fail("epsilon is not a constant scalar", epsilon)
    return result


def _fuse_chain(op, x, epsilon, mean, var, **_):
    k, shape = _chain_axes(x, mean, var)
    return op.LayerNormalization(x, const(op, np.ones(shape), like=x), axis=-k, epsilon=scalar(epsilon))


# ---- fuse: a constant scale / bias after a LayerNormalization -------------------------------------------------


def _ln(op, x):
    return op.LayerNormalization(x, _allow_other_inputs=True, _outputs=["ln"])


def _check_fold(context, ln, operand, **_) -> MatchResult:
    result = MatchResult()
    node = ln.producer()
    if not _const_params(node):
        return result.fail("LayerNormalization scale/bias are not constants", node)
    if _fold_into_tail(operand, node) is None:
        return result.fail("operand is not a constant that broadcasts within the normalized axes", operand)
    return result


def _fuse_scale(op, x, ln, operand, **_):
    node = ln.producer()
    gamma = _fold_into_tail(operand, node)
    scale = node.inputs[1].const_value.numpy() * gamma
    inputs = [x, const(op, scale, like=node.inputs[1])]
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        inputs.append(const(op, node.inputs[2].const_value.numpy() * gamma, like=node.inputs[2]))
    return op.op("LayerNormalization", *inputs, **node.attributes)


def _fuse_bias(op, x, ln, operand, **_):
    node = ln.producer()
    beta = _fold_into_tail(operand, node)
    has_bias = len(node.inputs) > 2 and node.inputs[2] is not None
    bias = node.inputs[2].const_value.numpy() + beta if has_bias else beta
    inputs = [x, node.inputs[1], const(op, bias, like=node.inputs[1])]
    return op.op("LayerNormalization", *inputs, **node.attributes)


def _scale_pattern(op, x, operand):
    return op.Mul(_ln(op, x), operand)


def _scale_pattern_swapped(op, x, operand):
    return op.Mul(operand, _ln(op, x))


def _bias_pattern(op, x, operand):
    return op.Add(_ln(op, x), operand)


def _bias_pattern_swapped(op, x, operand):
    return op.Add(operand, _ln(op, x))


# ---- decompose: LayerNormalization -> primitive ops -----------------------------------------------------------


def _ln_node(op, x):
    return op.LayerNormalization(x, _allow_other_inputs=True, _outputs=["y"])


def _decompose_axes(node: ir.Node) -> list[int] | None:
    axis = int_attr(node, "axis", -1)
    if axis < 0:
        return list(range(axis, 0))
    x = node.inputs[0]
    return list(range(axis, x.shape.rank())) if x.shape is not None else None


def _check_decompose(context, x, y, **_) -> MatchResult:
    result = MatchResult()
    if _decompose_axes(y.producer()) is None:
        return result.fail("non-negative axis on an input of unknown rank", x)
    return result


def _is_const(value: ir.Value | None, fill: float) -> bool:
    return value is not None and value.const_value is not None and bool(np.all(value.const_value.numpy() == fill))


def _decompose(op, x, y, **_):
    node = y.producer()
    axes, opset = _decompose_axes(node), opset_of(x)
    scale = node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    eps = node.attributes["epsilon"].as_float() if "epsilon" in node.attributes else 1e-5
    upcast = int_attr(node, "stash_type", 1) == 1 and x.dtype in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
    xs = op.Cast(x, to=ir.DataType.FLOAT) if upcast else x
    dtype = ir.DataType.FLOAT if upcast else x.dtype
    dev = op.Sub(xs, reduce(op, "ReduceMean", xs, axes, opset))
    var = reduce(op, "ReduceMean", op.Mul(dev, dev), axes, opset)
    out = op.Div(dev, op.Sqrt(op.Add(var, const(op, eps, dtype=dtype))))
    if upcast:
        out = op.Cast(out, to=x.dtype)
    if not _is_const(scale, 1.0):
        out = op.Mul(out, scale)
    if bias is not None and not _is_const(bias, 0.0):
        out = op.Add(out, bias)
    return out


LAYER_NORM = RuleSpec(
    name="layer_norm",
    big_op=OpId("", "LayerNormalization"),
    fuse_rules=(
        *rules("layer_norm_fusion", (_chain_div, _chain_recip, _chain_recip_swapped), _fuse_chain, _check_chain),
        *rules("layer_norm_scale_fusion", (_scale_pattern, _scale_pattern_swapped), _fuse_scale, _check_fold),
        *rules("layer_norm_bias_fusion", (_bias_pattern, _bias_pattern_swapped), _fuse_bias, _check_fold),
    ),
    decompose_rules=rules("layer_norm_decomposition", (_ln_node,), _decompose, _check_decompose),
)
