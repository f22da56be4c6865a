"""Small attention graphs built in code, one per exporter shape, and helpers the attention and MatMul tests share.

attention_model(scale=..., key=..., bias=...) -> ModelProto:  q, k, v -> [scale] MatMul(q, K^T) [+ bias] -> Softmax
-> MatMul(., v) -> y, with the scale, K^T and bias written the way one exporter writes them.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections import Counter

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from vdeploy.graph_passes.canonicalize import canonicalize
from vdeploy.graph_passes.legalize import all_nodes

H, S, D = 3, 5, 4
SCALE = D**-0.5
N_WINDOWS = 2
EXPORTERS = {"dynamo": (True, 18), "legacy": (False, 17)}  # (dynamo?, opset asked for)

SCALE_FORMS = ("scores_mul", "scores_div", "q_mul", "sqrt_both", "none")
KEY_FORMS = ("transpose", "flat", "flat5d", "bshd")
BIAS_FORMS = (None, "add", "mask2d", "two", "window")


def attention_model(
    *,
    scale: str = "q_mul",
    key: str = "transpose",
    bias: str | None = None,
    batch: int | str = 2,
    opset: int = 18,
    axis: int = -1,
    probs_output: bool = False,
    scale_input: bool = False,
    dtype: int = TensorProto.FLOAT,
    bias_batch: int = 1,
    seed: int = 0,
) -> onnx.ModelProto:
    """One attention, q/k/v as graph inputs (k laid out as `key` needs); constants as initializers."""
    rng = np.random.default_rng(seed)
    np_dtype = helper.tensor_dtype_to_np_dtype(dtype)
    inits, nodes = [], []

    def init(name, array):
        inits.append(onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(op, inputs, **attrs):
        out = f"{op.lower()}{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def fconst(name, array):
        return init(name, np.asarray(array, dtype=np_dtype))

    k_shape = {"bshd": [batch, S, H, D], "flat5d": [1, batch, H, S, D]}.get(key, [batch, H, S, D])
    inputs = [
        helper.make_tensor_value_info("q", dtype, [batch, H, S, D]),
        helper.make_tensor_value_info("k", dtype, k_shape),
        helper.make_tensor_value_info("v", dtype, [batch, H, S, D]),
    ]
    if key == "transpose":
        kt = node("Transpose", ["k"], perm=[0, 1, 3, 2])
    elif key == "bshd":
        kt = node("Transpose", ["k"], perm=[0, 2, 3, 1])
    else:  # dynamo's SDPA: flatten to [B*H, S, D], transpose, back to [B, H, D, S]
        flat = node("Reshape", ["k", init("flat_shape", np.array([batch * H, S, D], np.int64))])
        kt = node(
            "Reshape",
            [node("Transpose", [flat], perm=[0, 2, 1]), init("kt_shape", np.array([batch, H, D, S], np.int64))],
        )
    if scale_input:
        inputs.append(helper.make_tensor_value_info("s", dtype, []))
    s = "s" if scale_input else fconst("scale", SCALE)
    q = "q"
    if scale == "q_mul":
        q = node("Mul", [q, s])
    elif scale == "sqrt_both":
        root = fconst("root_scale", [SCALE**0.5])  # dynamo writes it with shape [1]
        q, kt = node("Mul", [q, root]), node("Mul", [kt, root])
    scores = node("MatMul", [q, kt])
    if scale == "scores_mul":
        scores = node("Mul", [scores, s])
    elif scale == "scores_div":
        scores = node("Div", [scores, fconst("sqrt_d", D**0.5)])
    if bias in ("add", "two", "window"):
        scores = node("Add", [scores, fconst("rel_bias", 0.1 * rng.standard_normal((bias_batch, H, S, S)))])
    if bias in ("mask2d", "two"):
        scores = node("Add", [scores, fconst("mask", np.where(rng.random((S, S)) < 0.3, -100.0, 0.0))])
    if bias == "window":  # Swin: view(-1, nW, H, N, N) + mask.unsqueeze(1).unsqueeze(0), view back
        windows = node("Reshape", [scores, init("win_shape", np.array([-1, N_WINDOWS, H, S, S], np.int64))])
        shift = fconst("shift_mask", np.where(rng.random((1, N_WINDOWS, 1, S, S)) < 0.3, -100.0, 0.0))
        scores = node("Reshape", [node("Add", [windows, shift]), init("back_shape", np.array([-1, H, S, S], np.int64))])
    probs = node("Softmax", [scores], axis=axis)
    nodes.append(helper.make_node("MatMul", [probs, "v"], ["y"]))
    outputs = [helper.make_tensor_value_info("y", dtype, None)]
    if probs_output:
        outputs.append(helper.make_tensor_value_info(probs, dtype, None))
    graph = helper.make_graph(nodes, "attention", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    return onnx.shape_inference.infer_shapes(model)


def feeds_for(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        shape = [d.dim_value for d in value.type.tensor_type.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        feeds[value.name] = rng.standard_normal(shape).astype(dtype) if shape else np.asarray(SCALE, dtype)
    return feeds


def run_ort(model: onnx.ModelProto | ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run with every ONNX Runtime graph optimisation off, so the graph runs exactly as written."""
    proto = ir.to_proto(model) if isinstance(model, ir.Model) else model
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def max_error(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """(max |got - want|, max |want|): the error and the output scale it is judged against."""
    return float(np.max(np.abs(got.astype(np.float64) - want))), float(np.max(np.abs(want)))


def op_list(model: ir.Model, *, constants: bool = False) -> Counter:
    """'domain::Op' (or 'Op') -> count; Constant nodes left out unless asked for."""
    return Counter(
        f"{n.domain}::{n.op_type}" if n.domain else n.op_type
        for n in all_nodes(model)
        if constants or n.op_type != "Constant"
    )


def export_canonical(module: torch.nn.Module, x: torch.Tensor, exporter: str) -> onnx.ModelProto:
    """torch -> ONNX with one exporter -> canonicalize (onnxsim), as the build pipeline does."""
    dynamo, opset = EXPORTERS[exporter]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if dynamo:
            proto = torch.onnx.export(module, (x,), dynamo=True, opset_version=opset, verbose=False).model_proto
        else:
            buffer = io.BytesIO()
            torch.onnx.export(module, (x,), buffer, dynamo=False, opset_version=opset)
            proto = onnx.load_from_string(buffer.getvalue())
    return canonicalize(proto).model
