"""Attention normalisation: every exporter's attention shape -> one private op, ``vdeploy.internal::Attention``.

The internal op (defined here, lowered by attention_lower.py; none may survive legalization):

    vdeploy.internal::Attention(Q, K, V[, bias]) -> Y          attribute scale: float (always present)
        Q    [B, H, Sq, Dk]   K [B, H, Skv, Dk]   V [B, H, Skv, Dv]      rank 4, one float dtype, B and H equal
        bias additive, same dtype, broadcastable (numpy rules) to [B, H, Sq, Skv] without enlarging it:
             0/-inf or 0/-100 masks, relative position bias, Swin's shift mask, or their sum
        Y    = Softmax(softcap(scale * (Q @ K^T)) + bias, axis=-1) @ V   [B, H, Sq, Dv]
        softcap: float attribute, optional (0: none); softcap(x) = c * tanh(x / c) (ONNX Attention's softcap)

Exporter shapes recognised (checked on timm deit_tiny / swin_tiny and hand-built blocks, dynamo opset 18 and legacy 17):
  * scale as one Mul or Div on Q.K^T, as a Mul on q only, or as two Muls by sqrt(scale) on q and on K^T (SDPA);
  * K^T as Transpose(k, [0,1,3,2]), Reshape->Transpose([0,2,1])->Reshape (dynamo SDPA; k may be 5-D after onnxsim),
    or Transpose(k_BSHd, [0,2,3,1]);
  * an optional additive mask/bias Add; two Adds (Swin: relative position bias, then shift mask); Swin's shift mask
    added inside a Reshape to [B/nW, nW, H, N, N] and back;
  * ONNX Attention (opset 23): 3-D or 4-D, causal, grouped-query, softcap (attention_onnx.py), so a model exported
    at opset 23 can be decomposed too.
Not captured (left as exported): Softmax written with a positive axis (axis=3), rank-3 [B*H, S, D] attention,
a scale that is not a constant scalar, an attention map used outside the chain (returned or reused).
The exporters' Where(IsNaN(p), 0, p) guard, which ORT's pattern accepts, is dropped: it only differs on rows whose
every score is -inf, which vision models do not produce (Swin masks with -100).
The core match reuses onnxscript's ORT SDPA pattern (``ort_fusions.sdpa.SDPA``, pinned onnxscript 0.7.2) through a
thin adapter. It needs shapes (run shape inference / canonicalize first): without them nothing is rewritten.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter.ort_fusions.sdpa import SDPA

from vdeploy.graph_passes.rules.base import INTERNAL_DOMAIN, const, static_shape

ATTENTION_OP = "Attention"  # op_type of the internal op, in INTERNAL_DOMAIN


def rank(value: ir.Value | None) -> int | None:
    return None if value is None or value.shape is None else value.shape.rank()


def shaped(value: ir.Value, like: ir.Value, dims) -> ir.Value:
    """Give a value a rewrite created the dtype of `like` and the given dims (None: unknown), for the rules after it."""
    value.dtype = like.dtype
    value.shape = ir.Shape(dims) if dims is not None else None
    return value


def _ints(op, values) -> ir.Value:
    return const(op, values, dtype=ir.DataType.INT64)


def _bias_fits(bias: ir.Value, scores_shape: ir.Shape) -> bool:
    """bias broadcasts to scores_shape without enlarging it (each right-aligned dim is 1 or equal)."""
    if bias.shape is None or bias.shape.rank() > len(scores_shape):
        return False
    return all(b == 1 or b == s for b, s in zip(reversed(list(bias.shape)), reversed(list(scores_shape))))


# --- Swin shift mask: Reshape(Reshape(s, [Bx, nW, H, N, M]) + m, s.shape) -> s + m as [Bx*nW, mh, N, M] ---------


def _window_mask_pattern(op, scores, window_shape, mask, back_shape):
    """Softmax(Reshape(Reshape(S, [Bx,nW,H,N,M]) + mask, S.shape)) -> Softmax(S + mask as [Bx*nW, 1|H, N, M])."""
    windowed = op.Reshape(
        op.Add(op.Reshape(scores, window_shape, _outputs=["windows"]), mask), back_shape, _outputs=["restored"]
    )
    return op.Softmax(windowed, axis=-1)


def _window_mask_check(context, scores, mask, windows, restored, **_) -> bool:
    s, w, m, r = static_shape(scores), static_shape(windows), static_shape(mask), static_shape(restored)
    if None in (s, w, m, r) or len(s) != 4 or len(w) != 5 or r != s or len(m) > 5:
        return False
    m = (1,) * (5 - len(m)) + m
    fits = all(md in (1, wd) for md, wd in zip(m, w))
    return fits and w[0] * w[1] == s[0] and w[2:] == s[1:]


def _window_mask_rewrite(op, scores, mask, windows, **_):
    bx, nw = static_shape(windows)[:2]
    m = static_shape(mask)
    m = (1,) * (5 - len(m)) + m  # [1 | Bx, 1 | nW, 1 | H, 1 | N, 1 | M]
    if m[:2] != (bx, nw):
        mask = shaped(op.Expand(mask, _ints(op, [bx, nw, *m[2:]])), mask, (bx, nw, *m[2:]))
    bias = shaped(op.Reshape(mask, _ints(op, [bx * nw, *m[2:]])), mask, (bx * nw, *m[2:]))
    return op.Softmax(shaped(op.Add(scores, bias), scores, scores.shape), axis=-1)


window_mask_to_bias = pattern.RewriteRule(
    _window_mask_pattern, _window_mask_rewrite, _window_mask_check, name="attention_window_mask_to_bias"
)


# --- two additive terms before Softmax (Swin: relative position bias, then shift mask) --------------------------


def _two_biases_pattern(op, scores, bias1, bias2):
    """Softmax((S + b1) + b2) -> Softmax(S + (b1 + b2)); S from MatMul/Mul/Div, neither bias enlarges S."""
    return op.Softmax(op.Add(op.Add(scores, bias1), bias2), axis=-1)


def _two_biases_check(context, scores, bias1, bias2, **_) -> bool:
    producer = scores.producer()
    if producer is None or producer.op_type not in ("MatMul", "Mul", "Div") or scores.shape is None:
        return False
    return _bias_fits(bias1, scores.shape) and _bias_fits(bias2, scores.shape)


def _two_biases_rewrite(op, scores, bias1, bias2, **_):
    b1, b2 = static_shape(bias1), static_shape(bias2)
    bias = shaped(op.Add(bias1, bias2), bias1, None if None in (b1, b2) else np.broadcast_shapes(b1, b2))
    return op.Softmax(shaped(op.Add(scores, bias), scores, scores.shape), axis=-1)


merge_score_biases = pattern.RewriteRule(
    _two_biases_pattern, _two_biases_rewrite, _two_biases_check, name="attention_merge_score_biases"
)


# --- dynamo's K^T: Reshape(k, [B*H,S,D]) -> Transpose(0,2,1) -> Reshape([B,H,D,S]) -> Transpose(k as [B,H,S,D]) --


def _flat_key_pattern(op, key, flat_shape, out_shape):
    """Reshape(Transpose(Reshape(k, [B*H,S,D]), [0,2,1]), [B,H,D,S]) -> Transpose(Reshape(k, [B,H,S,D]), [0,1,3,2])."""
    flat = op.Reshape(key, flat_shape, _outputs=["flat"])
    return op.Reshape(op.Transpose(flat, perm=[0, 2, 1]), out_shape, _outputs=["key_t"])


def _flat_key_check(context, key, flat, key_t, **_) -> bool:
    f, t = static_shape(flat), static_shape(key_t)  # k itself may be 5-D once onnxsim folds the Squeeze away
    feeds_scores = any(user.op_type in ("MatMul", "Mul", "Div") for user, _ in key_t.uses())  # q @ K^T [* s]
    return feeds_scores and f is not None and t is not None and len(t) == 4 and f == (t[0] * t[1], t[3], t[2])


def _flat_key_rewrite(op, key, key_t, **_):
    b, h, d, s = static_shape(key_t)
    if static_shape(key) != (b, h, s, d):
        key = shaped(op.Reshape(key, _ints(op, [b, h, s, d])), key, (b, h, s, d))
    return op.Transpose(key, perm=[0, 1, 3, 2])


flat_key_transpose_to_4d = pattern.RewriteRule(
    _flat_key_pattern, _flat_key_rewrite, _flat_key_check, name="attention_flat_key_transpose_to_4d"
)


# --- the core: MatMul / scale / [Add] / Softmax / MatMul -> internal Attention ----------------------------------


class AttentionFromMatMulSoftmax(SDPA):
    """MatMul(q*s1, K^T*s2)*s3 [+ bias] -> Softmax(-1) -> MatMul(., v) -> internal Attention(q, k, v[, bias]).

    Thin adapter over onnxscript's ORT SDPA pattern (scale forms, K^T forms, optional mask, B/H/D shape checks):
    it adds the bias-shape check and emits the internal op, with the scale always explicit.
    """

    def check(self, context, query, key, value, mask, key_format, **bindings):
        result = super().check(context, query, key, value, mask, key_format, **bindings)
        if not result:
            return result
        head_dim = query.shape[-1]
        if self._scale is None:  # SDPA leaves the default 1/sqrt(Dh) implicit; we record it
            self._scale = 1.0 / math.sqrt(head_dim)
        scores_shape = ir.Shape([query.shape[0], query.shape[1], query.shape[2], value.shape[2]])
        if mask is not None and not _bias_fits(mask, scores_shape):
            return result.fail("bias would enlarge the attention scores", mask)
        return result

    def rewrite(self, op, query, key, value, mask, key_format, **_):
        if key_format == "BSHd":
            b, s, h, d = key.shape
            key = shaped(op.Transpose(key, perm=[0, 2, 1, 3]), key, (b, h, s, d))
        inputs = [query, key, value] + ([mask] if mask is not None else [])
        return op.Attention(*inputs, scale=float(self._scale), _domain=INTERNAL_DOMAIN)


attention_from_matmul_softmax = AttentionFromMatMulSoftmax.rule(name="attention_from_matmul_softmax")


CAPTURE_RULES = (  # exporter shapes; order matters: the first three reshape what the core rule then captures
    flat_key_transpose_to_4d,
    window_mask_to_bias,
    merge_score_biases,
    attention_from_matmul_softmax,
)
