"""Split ONNX Runtime's fused Attention so INT8 can quantize its QKV projection (the layer that reads LayerNorm).

com.microsoft::Attention(x, W_qkv [H, q+k+v], b_qkv [q+k+v])   (onnxsim fuses BERT attention into it at export)
  -> MatMul(x, W_qkv) -> Split(q, k, v) -> com.microsoft::MultiHeadAttention(q, k, v, bias=b_qkv, num_heads, scale)
Exact in float. Only nodes without mask / past / attention-bias inputs are split (the others stay fused and float).
Why: the static Q/DQ quantizer leaves the fused op float, so a quarter of a BERT layer's MACs (3 of its 3+1+4 H x H
projections) stayed FP32 in INT8 builds; split, SmoothQuant and per-channel INT8 apply to them like any MatMul.
"""

from __future__ import annotations

MS = "com.microsoft"
PLAIN_ATTRIBUTES = frozenset({"num_heads", "scale", "qkv_hidden_sizes"})


def split_fused_attention(model):
    """A copy of `model` (onnx.ModelProto) with every plain com.microsoft::Attention split; the model itself when
    there is none."""
    import onnx
    from onnx import helper, numpy_helper

    nodes = [n for n in model.graph.node if n.domain == MS and n.op_type == "Attention" and _plain(n)]
    if not nodes:
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {t.name: t for t in model.graph.initializer}
    replaced = []
    for node in model.graph.node:
        if node.domain != MS or node.op_type != "Attention" or not _plain(node) or node.input[1] not in inits:
            replaced.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        width = numpy_helper.to_array(inits[node.input[1]]).shape[1]
        sizes = list(attrs.get("qkv_hidden_sizes") or [width // 3] * 3)
        base = node.name or node.output[0]
        matmul = helper.make_node("MatMul", [node.input[0], node.input[1]], [f"{base}/qkv_mm"], name=f"{base}/qkv")
        parts = [f"{base}/q", f"{base}/k", f"{base}/v"]
        split_sizes = numpy_helper.from_array(_int64(sizes), f"{base}/split_sizes")
        model.graph.initializer.append(split_sizes)
        new = [
            matmul,
            helper.make_node("Split", [matmul.output[0], split_sizes.name], parts, name=f"{base}/split", axis=-1),
        ]
        bias = [node.input[2]] if len(node.input) > 2 and node.input[2] else []  # MHA adds it (ORT would fuse a
        mha = {"num_heads": attrs["num_heads"]}  # MatMul + Add into a float Gemm, unquantized)
        if "scale" in attrs:
            mha["scale"] = attrs["scale"]
        new.append(
            helper.make_node("MultiHeadAttention", [*parts, *bias], [node.output[0]], name=base, domain=MS, **mha)  # type: ignore[arg-type]
        )
        replaced.extend(new)
    del model.graph.node[:]
    model.graph.node.extend(replaced)
    return model


def _plain(node) -> bool:
    """Input, weights and bias only, a single output (no present state), no causal or other special attributes."""
    extra = [name for name in node.input[3:] if name]
    attrs = {a.name for a in node.attribute}
    return not extra and len([o for o in node.output if o]) == 1 and attrs <= PLAIN_ATTRIBUTES


def _int64(values):
    import numpy as np

    return np.asarray(values, dtype=np.int64)
