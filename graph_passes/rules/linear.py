"""Linear layers: MatMul by a constant 2-D weight (+ a constant bias), or Gemm; in the form the target runs.

Tiers, best first (MatMul with two computed operands, as in attention, is not a linear layer: see matmul.py):
- kept (needs MatMul, Gemm).
- gemm_decomposition (needs MatMul, Add): Gemm(A, B const, C const)  =>  MatMul(A, alpha*B') [-> Add(beta*C)]
- linear_to_gemm (fused; needs Gemm, Reshape): MatMul(x[..., K], W) + b  =>  [Reshape M x K] -> Gemm(W, b)
  [-> Reshape ..., N];  matmul_to_gemm: the same without a bias
- linear_to_conv (conv-only NPUs; needs Conv, Reshape, Transpose): MatMul(x[..., K], W) + b
  =>  Reshape [M, K] -> Transpose -> Reshape [1, K, M, 1] -> Conv(W^T as N x K x 1 x 1, b) -> Reshape [N, M]
  -> Transpose -> Reshape [..., N]   (tokens run along the conv's height, so the NPU sees one image, not M)
  matmul_to_conv: the same without a bias;  gemm_to_conv: Gemm(A, B const, C const) => the same.
Both lowerings need the input's rank and all but at most one of its leading dims (that one becomes -1 in the
Reshapes). Gemm with transA is left alone.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter.pattern import MatchResult, RewriteRule

from vdeploy.graph_passes.rules.base import FLOAT_TYPES, Direction, Tier, TieredSpec, const, int_attr, ops

INT64 = ir.DataType.INT64


# ---- what a match means: (weight K x N, bias N | None), or None when it is not a linear layer ------------------


def _lead(x: ir.Value) -> tuple[int, ...] | None:
    """x's dims before the last (rank >= 2), -1 standing for the one that is not static; None if more are not."""
    if x.shape is None or x.shape.rank() < 2:
        return None
    lead = tuple(d if isinstance(d, int) else -1 for d in tuple(x.shape)[:-1])
    return lead if lead.count(-1) <= 1 else None


def _bias_vector(bias: np.ndarray, n: int, rank: int) -> np.ndarray | None:
    """The bias as an [N] vector; None when it is not one value per output channel (or would add dims)."""
    if bias.ndim > rank or any(d != 1 for d in bias.shape[:-1]) or bias.size not in (1, n):
        return None
    return np.broadcast_to(bias.reshape(-1), (n,))


def _weight_bias(x: ir.Value, w: ir.Value, b: ir.Value | None):
    """MatMul(x, w) [+ b] as (weight K x N, bias N | None); None when it is not a linear layer."""
    if x.dtype not in FLOAT_TYPES or w.const_value is None or b is not None and b.const_value is None:
        return None
    weight = w.const_value.numpy()
    if weight.ndim != 2 or _lead(x) is None:
        return None
    if isinstance(x.shape[-1], int) and x.shape[-1] != weight.shape[0]:
        return None
    if b is None:
        return weight, None
    bias = _bias_vector(b.const_value.numpy(), weight.shape[1], x.shape.rank())
    return None if bias is None else (weight, bias)


def _gemm_parts(x: ir.Value, y: ir.Value):
    """Gemm(x, B, C) as (weight K x N, bias as given | None), alpha/beta/transB folded in; None when not foldable."""
    node = y.producer()
    b = node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 else None
    if x.dtype not in FLOAT_TYPES or int_attr(node, "transA", 0) or b.const_value is None:
        return None
    if c is not None and c.const_value is None:
        return None
    alpha = node.attributes["alpha"].as_float() if "alpha" in node.attributes else 1.0
    beta = node.attributes["beta"].as_float() if "beta" in node.attributes else 1.0
    weight = b.const_value.numpy()
    weight = alpha * (weight.T if int_attr(node, "transB", 0) else weight)
    return weight, None if c is None else beta * c.const_value.numpy()


def _gemm_conv_parts(x: ir.Value, y: ir.Value):
    """Gemm as (weight, bias N | None) for a 1x1 Conv: needs a static input and a per-channel bias."""
    parts = _gemm_parts(x, y)
    if parts is None or _lead(x) is None:
        return None
    weight, bias = parts
    if bias is None:
        return weight, None
    vector = _bias_vector(bias, weight.shape[1], 2)
    return None if vector is None else (weight, vector)


# ---- patterns ---------------------------------------------------------------------------------------------------


def _matmul_add(op, x, w, b):
    return op.Add(op.MatMul(x, w), b)


def _add_matmul(op, x, w, b):
    return op.Add(b, op.MatMul(x, w))


def _matmul(op, x, w):
    return op.MatMul(x, w)


def _gemm(op, x):
    return op.Gemm(x, _allow_other_inputs=True, _outputs=["y"])


def _check_linear(context, x, w, b=None, **_) -> MatchResult:
    result = MatchResult()
    if _weight_bias(x, w, b) is None:
        return result.fail("not x[..., K] @ constant W[K, N] (+ per-channel constant bias) with known leading dims", x)
    return result


def _check_gemm(context, x, y, **_) -> MatchResult:
    result = MatchResult()
    if _gemm_parts(x, y) is None:
        return result.fail("Gemm with transA, computed B/C, or a non-float input", y)
    return result


def _check_gemm_conv(context, x, y, **_) -> MatchResult:
    result = MatchResult()
    if _gemm_conv_parts(x, y) is None:
        return result.fail("Gemm not foldable, leading dims unknown, or a bias not per output channel", y)
    return result


# ---- replacements -----------------------------------------------------------------------------------------------


def _reshape(op, value, shape):
    return op.Reshape(value, const(op, list(shape), dtype=INT64))


def _conv_1x1(op, x, weight: np.ndarray, bias: np.ndarray | None):
    lead, (k, n) = _lead(x), weight.shape
    m = math.prod(lead) if -1 not in lead else -1
    rows = _reshape(op, x, (m, k)) if len(lead) != 1 else x
    image = _reshape(op, op.Transpose(rows, perm=[1, 0]), (1, k, m, 1))
    inputs = [image, const(op, np.ascontiguousarray(weight.T).reshape(n, k, 1, 1), x)]
    if bias is not None:
        inputs.append(const(op, bias, x))
    out = op.Transpose(_reshape(op, op.Conv(*inputs, kernel_shape=[1, 1]), (n, m)), perm=[1, 0])
    return _reshape(op, out, (*lead, n)) if len(lead) != 1 else out


def _gemm_of(op, x, weight: np.ndarray, bias: np.ndarray | None):
    lead, (k, n) = _lead(x), weight.shape
    m = math.prod(lead) if -1 not in lead else -1
    rows = _reshape(op, x, (m, k)) if len(lead) != 1 else x
    inputs = [rows, const(op, weight, x)] + ([const(op, bias, x)] if bias is not None else [])
    out = op.Gemm(*inputs)
    return _reshape(op, out, (*lead, n)) if len(lead) != 1 else out


def _linear_to_conv(op, x, w, b=None, **_):
    return _conv_1x1(op, x, *_weight_bias(x, w, b))


def _linear_to_gemm(op, x, w, b=None, **_):
    return _gemm_of(op, x, *_weight_bias(x, w, b))


def _gemm_to_conv(op, x, y, **_):
    return _conv_1x1(op, x, *_gemm_conv_parts(x, y))


def _gemm_decompose(op, x, y, **_):
    weight, bias = _gemm_parts(x, y)
    out = op.MatMul(x, const(op, weight, x))
    return out if bias is None else op.Add(out, const(op, bias, x))


def _linear_rules(target: str, rewrite):
    """linear_to_<target> (MatMul + bias, either Add order), then matmul_to_<target> (no bias): a separate walk,
    so a MatMul is taken alone only when no bias Add claimed it."""
    return (
        RewriteRule(_matmul_add, rewrite, _check_linear, name=f"linear_to_{target}"),
        RewriteRule(_add_matmul, rewrite, _check_linear, name=f"linear_to_{target}"),
        RewriteRule(_matmul, rewrite, _check_linear, name=f"matmul_to_{target}"),
    )


LINEAR = TieredSpec(
    name="linear",
    tiers=(
        Tier(Direction.kept, ops("MatMul", "Gemm"), ()),
        Tier(
            Direction.decomposed,
            ops("MatMul", "Add"),
            (RewriteRule(_gemm, _gemm_decompose, _check_gemm, name="gemm_decomposition"),),
        ),
        Tier(Direction.fused, ops("Gemm", "Reshape"), _linear_rules("gemm", _linear_to_gemm)),
        Tier(
            Direction.decomposed,
            ops("Conv", "Reshape", "Transpose"),
            (
                *_linear_rules("conv", _linear_to_conv),
                RewriteRule(_gemm, _gemm_to_conv, _check_gemm_conv, name="gemm_to_conv"),
            ),
        ),
    ),
)
