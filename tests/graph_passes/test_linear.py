"""Linear rules: MatMul(+Add) / Gemm as 1x1 Conv (conv-only NPUs), as Gemm, and Gemm as MatMul + Add."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from vdeploy.graph_passes.rules.base import Direction
from vdeploy.graph_passes.rules.linear import LINEAR

from .helpers import ORT_OPS, assert_same_numerics, build, legalized, op_types, without

RNG = np.random.default_rng(5)
W = RNG.standard_normal((16, 24)).astype(np.float32)
B = RNG.standard_normal(24).astype(np.float32)
CONV_ONLY = without("MatMul", "Gemm")
GEMM_ONLY = without("MatMul")
CONV_OPS = ["Reshape", "Transpose", "Reshape", "Conv", "Reshape", "Transpose", "Reshape"]

LINEAR_3D = """
g (float[2,5,16] x) => (float[2,5,24] y) {
  m = MatMul(x, w)
  y = Add(b, m)
}"""


def test_kept_where_matmul_and_gemm_exist():
    model = build(LINEAR_3D, w=W, b=B)
    out, result = legalized(model, ORT_OPS, LINEAR)
    assert op_types(out) == ["MatMul", "Add"] and result.choices["linear"] == Direction.kept


def test_matmul_add_to_1x1_conv():
    model = build(LINEAR_3D, w=W, b=B)
    out, result = legalized(model, CONV_ONLY, LINEAR)
    assert op_types(out) == CONV_OPS and result.rules == {"linear_to_conv": 1}
    assert_same_numerics(model, out)


def test_rank2_matmul_without_bias_to_conv():
    model = build("g (float[7,16] x) => (float[7,24] y) {\n y = MatMul(x, w)\n}", w=W)
    out, result = legalized(model, CONV_ONLY, LINEAR)
    assert op_types(out) == ["Transpose", "Reshape", "Conv", "Reshape", "Transpose"]
    assert result.rules == {"matmul_to_conv": 1}
    assert_same_numerics(model, out)


def test_one_dynamic_leading_dim_becomes_minus_one():
    model = build("g (float[N,5,16] x) => (float[N,5,24] y) {\n m = MatMul(x, w)\n y = Add(m, b)\n}", w=W, b=B)
    out, _ = legalized(model, CONV_ONLY, LINEAR)
    assert op_types(out) == CONV_OPS
    shapes = [c for c in out.graph.node if c.op_type == "Constant"]
    assert any(-1 in onnx.numpy_helper.to_array(c.attribute[0].t).tolist() for c in shapes)
    assert_same_numerics(model, out)


def test_gemm_to_conv_folds_alpha_beta_transb():
    model = build(
        """
g (float[3,16] x) => (float[3,24] y) {
  y = Gemm <transB=1, alpha=0.5, beta=2.0> (x, wt, c)
}""",
        wt=W.T.copy(),
        c=B[None],
    )
    out, result = legalized(model, CONV_ONLY, LINEAR)
    assert "Gemm" not in op_types(out) and result.rules == {"gemm_to_conv": 1}
    assert_same_numerics(model, out)


def test_gemm_decomposes_to_matmul_add():
    model = build(
        """
g (float[3,16] x) => (float[3,24] y) {
  y = Gemm <transB=1, alpha=0.5, beta=2.0> (x, wt, c)
}""",
        wt=W.T.copy(),
        c=RNG.standard_normal((3, 24)).astype(np.float32),
    )
    out, result = legalized(model, without("Gemm"), LINEAR)
    assert op_types(out) == ["MatMul", "Add"] and result.decomposed == {"linear": 1}
    assert_same_numerics(model, out)


def test_matmul_add_to_gemm_with_reshapes():
    model = build(LINEAR_3D, w=W, b=B)
    out, result = legalized(model, GEMM_ONLY, LINEAR)
    assert op_types(out) == ["Reshape", "Gemm", "Reshape"] and result.fused == {"linear": 1}
    assert_same_numerics(model, out)


def test_round_trip_decompose_of_fuse():
    model = build("g (float[7,16] x) => (float[7,24] y) {\n m = MatMul(x, w)\n y = Add(m, b)\n}", w=W, b=B)
    fused, _ = legalized(model, GEMM_ONLY, LINEAR)
    assert op_types(fused) == ["Gemm"]
    back, _ = legalized(fused, without("Gemm"), LINEAR)
    assert op_types(back) == ["MatMul", "Add"]
    assert_same_numerics(model, back)


@pytest.mark.parametrize(
    "case,body,inits",
    [
        (
            "two dynamic leading dims",
            "g (float[N,T,16] x) => (float[N,T,24] y) {\n m = MatMul(x, w)\n y = Add(m, b)\n}",
            {"w": W, "b": B},
        ),
        (
            "two computed operands",
            "g (float[2,5,16] x, float[2,16,24] v) => (float[2,5,24] y) {\n y = MatMul(x, v)\n}",
            {},
        ),
        ("3-D weight", "g (float[2,5,16] x) => (float[2,5,24] y) {\n y = MatMul(x, w3)\n}", {"w3": np.stack([W, W])}),
    ],
)
def test_negatives_left_alone(case, body, inits):
    model = build(body, **inits)
    out, result = legalized(model, CONV_ONLY, LINEAR)
    assert op_types(out) == op_types(model) and not result.rules, case


def test_per_token_bias_stays_an_add():
    model = build(LINEAR_3D, w=W, b=RNG.standard_normal((5, 24)).astype(np.float32))
    out, result = legalized(model, CONV_ONLY, LINEAR)
    assert op_types(out) == [*CONV_OPS, "Add"] and result.rules == {"matmul_to_conv": 1}
    assert_same_numerics(model, out)
