"""ONNX Attention (opset 23) -> the internal attention op, so targets without Attention can decompose it.

Attention(Q, K, V[, attn_mask]) -> [3-D: Reshape+Transpose to 4-D] -> [GQA: repeat K/V heads by Concat]
-> [is_causal: + constant causal bias] -> vdeploy.internal::Attention(q, k, v[, bias], scale, softcap) -> [3-D back]

Follows the reference (onnx/reference/ops/op_attention.py, onnx 1.23): scores = softcap(scale * Q @ K^T) + bias,
bias = attn_mask (+ causal: -inf where key j > query i, top-left aligned when there is no past), K/V heads repeated
head-wise (np.repeat, axis 1) when q has more heads. The causal bias uses the dtype's lowest finite value rather
than -inf (no infinite constants for NPU quantizers; every causal row keeps key 0, so no row is fully masked).
Not captured (the node stays as it is and counts as outside the op set): past_key/past_value or nonpad_kv_seqlen
inputs, a boolean attn_mask, a mask shorter than the keys, a used present_key/present_value/qk output,
softmax_precision, and shapes that are not static.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from vdeploy.graph_passes.rules.attention_normalize import rank, shaped
from vdeploy.graph_passes.rules.base import INTERNAL_DOMAIN, const, static_shape


def _ints(op, values) -> ir.Value:
    return const(op, list(values), dtype=ir.DataType.INT64)


def _pattern(op, query, key, value):
    return op.Attention(query, key, value, _allow_other_inputs=True, _outputs=["out"])


def _heads(node: ir.Node, query, key) -> tuple[int, int] | None:
    """(q heads, kv heads) from the 4-D shapes or the 3-D attributes; None when unknown or not divisible."""
    attrs = node.attributes
    if rank(query) == 4:
        hq, hkv = query.shape[1], key.shape[1]
    else:
        hq, hkv = attrs.get_int("q_num_heads", 0), attrs.get_int("kv_num_heads", 0)
    if not (isinstance(hq, int) and isinstance(hkv, int)) or hq <= 0 or hkv <= 0 or hq % hkv:
        return None
    return hq, hkv


def _check(context, query, key, value, out, **_) -> bool:
    node = out.producer()
    attrs = node.attributes
    shapes = [static_shape(v) for v in (query, key, value)]
    if None in shapes or len({len(s) for s in shapes}) != 1 or len(shapes[0]) not in (3, 4):
        return False
    if any(extra.uses() or extra.is_graph_output() for extra in node.outputs[1:]):
        return False  # present_key / present_value / qk_matmul_output are wanted
    if any(v is not None for v in node.inputs[4:]) or "softmax_precision" in attrs:
        return False  # past / nonpad_kv_seqlen: a KV cache, not a vision block
    mask = node.inputs[3] if len(node.inputs) > 3 else None
    if mask is not None:
        m = static_shape(mask)
        if m is None or mask.dtype is None or not mask.dtype.is_floating_point() or m[-1] != shapes[1][-2]:
            return False
    if query.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE):
        return False
    heads = _heads(node, query, key)
    if heads is None:
        return False
    hq, hkv = heads
    if len(shapes[0]) == 3:
        return all(s[-1] % h == 0 for s, h in zip(shapes, (hq, hkv, hkv)))
    return shapes[0][0] == shapes[1][0] == shapes[2][0] and shapes[1][1] == shapes[2][1]


def _to_4d(op, x: ir.Value, heads: int) -> ir.Value:
    """[B, S, H*D] -> [B, H, S, D]."""
    b, s, hidden = static_shape(x)
    split = shaped(op.Reshape(x, _ints(op, [b, s, heads, hidden // heads])), x, (b, s, heads, hidden // heads))
    return shaped(op.Transpose(split, perm=[0, 2, 1, 3]), x, (b, heads, s, hidden // heads))


def _repeat_heads(op, x: ir.Value, reps: int) -> ir.Value:
    """[B, Hkv, S, D] -> [B, Hkv*reps, S, D], each head repeated reps times in place (np.repeat on axis 1)."""
    b, h, s, d = static_shape(x)
    single = shaped(op.Reshape(x, _ints(op, [b, h, 1, s, d])), x, (b, h, 1, s, d))
    copies = shaped(op.Concat(*([single] * reps), axis=2), x, (b, h, reps, s, d))
    return shaped(op.Reshape(copies, _ints(op, [b, h * reps, s, d])), x, (b, h * reps, s, d))


def _causal_bias(op, like: ir.Value, sq: int, skv: int) -> ir.Value:
    dtype = like.dtype.numpy()
    allowed = np.arange(skv)[None, :] <= np.arange(sq)[:, None]
    return const(op, np.where(allowed, 0, np.finfo(dtype).min).astype(dtype), like=like)


def _rewrite(op, query, key, value, out, **_):
    node = out.producer()
    attrs = node.attributes
    hq, hkv = _heads(node, query, key)
    three_d = rank(query) == 3
    if three_d:
        query, key, value = _to_4d(op, query, hq), _to_4d(op, key, hkv), _to_4d(op, value, hkv)
    if hq != hkv:
        key, value = _repeat_heads(op, key, hq // hkv), _repeat_heads(op, value, hq // hkv)
    b, _, sq, dk = static_shape(query)
    skv, dv = static_shape(key)[2], static_shape(value)[3]
    bias = node.inputs[3] if len(node.inputs) > 3 else None
    if attrs.get_int("is_causal", 0):
        causal = _causal_bias(op, query, sq, skv)
        bias = (
            causal
            if bias is None
            else shaped(op.Add(bias, causal), bias, np.broadcast_shapes(static_shape(bias), (sq, skv)))
        )
    scale = attrs.get_float("scale") if "scale" in attrs else 1.0 / math.sqrt(dk)
    inputs = [query, key, value] + ([bias] if bias is not None else [])
    y = op.Attention(
        *inputs, scale=float(scale), softcap=float(attrs.get_float("softcap", 0.0)), _domain=INTERNAL_DOMAIN
    )
    shaped(y, query, (b, hq, sq, dv))
    if not three_d:
        return y
    back = shaped(op.Transpose(y, perm=[0, 2, 1, 3]), query, (b, sq, hq, dv))
    return op.Reshape(back, _ints(op, [b, sq, hq * dv]))


attention_from_onnx_attention = pattern.RewriteRule(_pattern, _rewrite, _check, name="attention_from_onnx_attention")
