"""Attention lowering: ``vdeploy.internal::Attention`` -> the target's attention op, or MatMul/Softmax/MatMul.

Three lowerings, tried in the order AttentionLowerSpec (attention.py) puts them; the first two may decline a node,
the decomposition never does, so nothing internal survives:
  attention_to_onnx_attention  -> ONNX Attention (opset 23), only when the model already imports opset >= 23
  attention_to_ort_mha         -> com.microsoft::MultiHeadAttention (3-D q/k/v, num_heads, 4-D attention_bias);
                                  FP32 or FP16, head count static
  attention_to_matmul_softmax  -> Mul(q, scale) -> MatMul(., K^T) [-> softcap: Mul, Tanh, Mul] [-> Add bias]
                                  -> Softmax(-1) -> MatMul(., v)
"""

from __future__ import annotations

import onnx.defs
import onnx_ir as ir
from onnxscript.rewriter import pattern

from vdeploy.graph_passes.rules.attention_normalize import rank, shaped
from vdeploy.graph_passes.rules.base import INTERNAL_DOMAIN, const

ONNX_ATTENTION_SINCE = 23


def _internal_pattern(op, query, key, value):
    return op.Attention(query, key, value, _domain=INTERNAL_DOMAIN, _allow_other_inputs=True, _outputs=["out"])


def _scale_and_bias(out: ir.Value) -> tuple[float, ir.Value | None]:
    node = out.producer()
    bias = node.inputs[3] if len(node.inputs) > 3 else None
    return node.attributes.get_float("scale"), bias


def _softcap(out: ir.Value) -> float:
    return out.producer().attributes.get_float("softcap", 0.0)


def _model_opset(context) -> int:
    return context.model.opset_imports.get("", 1)


def onnx_attention_available(opset: int) -> bool:
    """True when the ONNX standard (as installed) defines Attention at or below this opset."""
    try:
        return onnx.defs.get_schema("Attention", opset, "").since_version >= ONNX_ATTENTION_SINCE
    except onnx.defs.SchemaError:
        return False


# --- ONNX Attention (opset 23) ----------------------------------------------------------------------------------


def _to_onnx_attention_check(context, query, key, value, out, **_) -> bool:
    return onnx_attention_available(_model_opset(context)) and rank(query) == 4


def _to_onnx_attention_rewrite(op, query, key, value, out, **_):
    """internal Attention(q, k, v[, bias]) -> Attention(q, k, v[, attn_mask=bias], scale) (ONNX opset 23)."""
    scale, bias = _scale_and_bias(out)
    softcap = {"softcap": _softcap(out)} if _softcap(out) else {}
    return op.Attention(query, key, value, *([bias] if bias is not None else []), scale=scale, **softcap)


attention_to_onnx_attention = pattern.RewriteRule(
    _internal_pattern, _to_onnx_attention_rewrite, _to_onnx_attention_check, name="attention_to_onnx_attention"
)


# --- com.microsoft::MultiHeadAttention --------------------------------------------------------------------------


def _to_ort_mha_check(context, query, key, value, out, **_) -> bool:
    _scale, bias = _scale_and_bias(out)
    if _softcap(out) or not (rank(query) == rank(key) == rank(value) == 4) or not isinstance(query.shape[1], int):
        return False  # MultiHeadAttention has no softcap
    if query.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16):
        return False
    if bias is None:
        return True
    if rank(bias) is None:
        return False
    dims = (1,) * (4 - rank(bias)) + tuple(bias.shape)  # attention_bias: (B or 1, H or 1, Sq, Skv)
    return dims[0] in (1, query.shape[0]) and dims[1] in (1, query.shape[1])


def _to_ort_mha_rewrite(op, query, key, value, out, **_):
    """internal Attention -> Transpose+Reshape q,k,v to [B,S,H*D] -> MultiHeadAttention -> Reshape+Transpose back."""
    scale, bias = _scale_and_bias(out)
    heads = query.shape[1]
    to_3d = const(op, [0, 0, -1], dtype=ir.DataType.INT64)
    q3, k3, v3 = (op.Reshape(op.Transpose(x, perm=[0, 2, 1, 3]), to_3d) for x in (query, key, value))
    extra = []
    if bias is not None:
        if rank(bias) < 4:
            bias = op.Unsqueeze(bias, const(op, list(range(4 - rank(bias))), dtype=ir.DataType.INT64))
        extra = [None, None, bias]  # bias, key_padding_mask unused; attention_bias
    y3 = op.MultiHeadAttention(q3, k3, v3, *extra, num_heads=heads, scale=scale, _domain="com.microsoft")
    to_4d = const(op, [0, 0, heads, -1], dtype=ir.DataType.INT64)
    return op.Transpose(op.Reshape(y3, to_4d), perm=[0, 2, 1, 3])


attention_to_ort_mha = pattern.RewriteRule(
    _internal_pattern, _to_ort_mha_rewrite, _to_ort_mha_check, name="attention_to_ort_mha"
)


# --- MatMul / Softmax / MatMul ----------------------------------------------------------------------------------


def _to_matmul_softmax_rewrite(op, query, key, value, out, **_):
    """internal Attention -> Mul(q, scale) -> MatMul(., Transpose(k)) [-> Add bias] -> Softmax(-1) -> MatMul(., v)."""
    scale, bias = _scale_and_bias(out)
    (b, h, sq, dk), skv = query.shape, key.shape[2]  # shapes kept on the new values for the MatMul-rank family
    if scale != 1.0:  # scaling q (not the scores) is cheaper when D < Skv and keeps FP16 scores in range
        query = shaped(op.Mul(query, const(op, scale, like=query)), query, query.shape)
    key_t = shaped(op.Transpose(key, perm=[0, 1, 3, 2]), key, (b, h, dk, skv))
    scores = shaped(op.MatMul(query, key_t), query, (b, h, sq, skv))
    softcap = _softcap(out)
    if softcap:  # c * tanh(scores / c), before the bias (ONNX Attention's order)
        squashed = shaped(op.Tanh(op.Mul(scores, const(op, 1.0 / softcap, like=scores))), scores, scores.shape)
        scores = shaped(op.Mul(squashed, const(op, softcap, like=scores)), scores, scores.shape)
    if bias is not None:
        scores = shaped(op.Add(scores, bias), scores, scores.shape)
    return op.MatMul(shaped(op.Softmax(scores, axis=-1), scores, scores.shape), value)


attention_to_matmul_softmax = pattern.RewriteRule(
    _internal_pattern, _to_matmul_softmax_rewrite, name="attention_to_matmul_softmax"
)
