"""LayerNorm rules: chain -> LayerNormalization (every exporter spelling), LayerNormalization -> primitive ops."""

from __future__ import annotations

import numpy as np
import pytest

from vdeploy.graph_passes.rules.base import Direction
from vdeploy.graph_passes.rules.layer_norm import LAYER_NORM

from .helpers import ORT_OPS, assert_same_numerics, build, legalized, op_types, without

RNG = np.random.default_rng(7)
W16 = (1 + 0.2 * RNG.standard_normal(16)).astype(np.float32)
B16 = (0.1 * RNG.standard_normal(16)).astype(np.float32)

# legacy exporter below opset 17 (axes attribute, Pow 2, Div); scale and bias after
LEGACY_CHAIN = """
g (float[2,5,16] x) => (float[2,5,16] y) {
  mean = ReduceMean <axes=[-1]> (x)
  d = Sub(x, mean)
  two = Constant <value = float {2.0}> ()
  sq = Pow(d, two)
  var = ReduceMean <axes=[-1]> (sq)
  eps = Constant <value = float {1e-5}> ()
  ve = Add(var, eps)
  std = Sqrt(ve)
  n = Div(d, std)
  nw = Mul(n, w)
  y = Add(nw, b)
}"""

# hand-written at opset 18 (axes input, Mul(d, d), eps first, Reciprocal, scale and bias as first operands)
HAND_CHAIN = """
g (float[2,5,16] x) => (float[2,5,16] y) {
  axes = Constant <value = int64[1] {-1}> ()
  mean = ReduceMean <keepdims=1> (x, axes)
  d = Sub(x, mean)
  dd = Mul(d, d)
  var = ReduceMean(dd, axes)
  eps = Constant <value = float {1e-6}> ()
  ve = Add(eps, var)
  std = Sqrt(ve)
  inv = Reciprocal(std)
  n = Mul(inv, d)
  wn = Mul(w, n)
  y = Add(b, wn)
}"""


def test_legacy_chain_fuses_to_one_layer_norm():
    model = build(LEGACY_CHAIN, opset=17, w=W16, b=B16)
    out, result = legalized(model, ORT_OPS, LAYER_NORM)
    assert op_types(out) == ["LayerNormalization"]
    assert result.rules == {"layer_norm_fusion": 1, "layer_norm_scale_fusion": 1, "layer_norm_bias_fusion": 1}
    assert result.fused == {"layer_norm": 3} and result.choices["layer_norm"] == Direction.fused
    assert_same_numerics(model, out)


def test_hand_written_chain_fuses():
    model = build(HAND_CHAIN, opset=18, w=W16, b=B16)
    out, _ = legalized(model, ORT_OPS, LAYER_NORM)
    assert op_types(out) == ["LayerNormalization"]
    assert_same_numerics(model, out)


def test_two_trailing_axes_and_no_affine():
    model = build(
        """
g (float[3,4,16] x) => (float[3,4,16] y) {
  mean = ReduceMean <axes=[1, 2]> (x)
  d = Sub(x, mean)
  dd = Mul(d, d)
  var = ReduceMean <axes=[-2, -1]> (dd)
  eps = Constant <value = float {1e-5}> ()
  ve = Add(var, eps)
  std = Sqrt(ve)
  y = Div(d, std)
}""",
        opset=17,
    )
    out, _ = legalized(model, ORT_OPS, LAYER_NORM)
    assert op_types(out) == ["LayerNormalization"]
    (node,) = [n for n in out.graph.node if n.op_type == "LayerNormalization"]
    assert [a.i for a in node.attribute if a.name == "axis"] == [-2]
    assert_same_numerics(model, out)


@pytest.mark.parametrize(
    "case,body",
    [
        (
            "channel-first axis of NCHW",
            """
g (float[1,8,4,4] x) => (float[1,8,4,4] y) {
  mean = ReduceMean <axes=[1]> (x)
  d = Sub(x, mean)
  dd = Mul(d, d)
  var = ReduceMean <axes=[1]> (dd)
  eps = Constant <value = float {1e-5}> ()
  ve = Add(var, eps)
  std = Sqrt(ve)
  y = Div(d, std)
}""",
        ),
        (
            "mean and variance over different axes",
            """
g (float[2,5,16] x) => (float[2,5,16] y) {
  mean = ReduceMean <axes=[-1]> (x)
  d = Sub(x, mean)
  dd = Mul(d, d)
  var = ReduceMean <axes=[-2, -1]> (dd)
  eps = Constant <value = float {1e-5}> ()
  ve = Add(var, eps)
  std = Sqrt(ve)
  y = Div(d, std)
}""",
        ),
        (
            "epsilon not a constant",
            """
g (float[2,5,16] x, float[1] eps) => (float[2,5,16] y) {
  mean = ReduceMean <axes=[-1]> (x)
  d = Sub(x, mean)
  dd = Mul(d, d)
  var = ReduceMean <axes=[-1]> (dd)
  ve = Add(var, eps)
  std = Sqrt(ve)
  y = Div(d, std)
}""",
        ),
        (
            "deviation also used elsewhere",
            """
g (float[2,5,16] x) => (float[2,5,16] y, float[2,5,16] d) {
  mean = ReduceMean <axes=[-1]> (x)
  d = Sub(x, mean)
  dd = Mul(d, d)
  var = ReduceMean <axes=[-1]> (dd)
  eps = Constant <value = float {1e-5}> ()
  ve = Add(var, eps)
  std = Sqrt(ve)
  y = Div(d, std)
}""",
        ),
    ],
)
def test_chain_negatives_left_alone(case, body):
    model = build(body, opset=17)
    out, result = legalized(model, ORT_OPS, LAYER_NORM)
    assert op_types(out) == op_types(model), case
    assert not result.rules


def test_per_token_bias_is_not_folded():
    model = build(
        """
g (float[2,5,16] x) => (float[2,5,16] y) {
  n = LayerNormalization <axis=-1> (x, w)
  y = Add(n, pos)
}""",
        opset=17,
        w=W16,
        pos=RNG.standard_normal((5, 16)).astype(np.float32),
    )
    out, result = legalized(model, ORT_OPS, LAYER_NORM)
    assert op_types(out) == ["LayerNormalization", "Add"] and not result.rules


def test_chain_is_not_fused_below_opset_17():
    model = build(LEGACY_CHAIN, opset=14, w=W16, b=B16)
    out, result = legalized(model, ORT_OPS, LAYER_NORM)
    assert result.choices["layer_norm"] == Direction.decomposed  # LayerNormalization does not exist at opset 14
    assert op_types(out) == op_types(model)


@pytest.mark.parametrize("opset", [17, 18])
def test_decomposition(opset):
    model = build(
        """
g (float[2,5,16] x) => (float[2,5,16] y) {
  y = LayerNormalization <axis=-1, epsilon=1e-5> (x, w, b)
}""",
        opset=opset,
        w=W16,
        b=B16,
    )
    out, result = legalized(model, without("LayerNormalization"), LAYER_NORM)
    assert op_types(out) == ["ReduceMean", "Sub", "Mul", "ReduceMean", "Add", "Sqrt", "Div", "Mul", "Add"]
    assert result.decomposed == {"layer_norm": 1}
    reduce_means = [n for n in out.graph.node if n.op_type == "ReduceMean"]
    assert all((len(n.input) == 2) == (opset >= 18) for n in reduce_means)  # axes input from opset 18
    assert_same_numerics(model, out, scale=3.0)


def test_decomposition_of_positive_axis():
    model = build(
        """
g (float[3,4,16] x) => (float[3,4,16] y) {
  y = LayerNormalization <axis=1> (x, w)
}""",
        opset=17,
        w=RNG.standard_normal((4, 16)).astype(np.float32),
    )
    out, _ = legalized(model, without("LayerNormalization"), LAYER_NORM)
    assert "LayerNormalization" not in op_types(out)
    assert_same_numerics(model, out)


def test_decomposition_float16_keeps_statistics_in_float():
    model = build(
        """
g (float16[2,5,16] x) => (float16[2,5,16] y) {
  y = LayerNormalization <axis=-1> (x, w, b)
}""",
        opset=18,
        w=W16.astype(np.float16),
        b=B16.astype(np.float16),
    )
    out, _ = legalized(model, without("LayerNormalization"), LAYER_NORM)
    assert op_types(out)[0] == "Cast" and "LayerNormalization" not in op_types(out)
    assert_same_numerics(model, out, rel=2e-3)  # float16 output rounding (2^-11), not the rewrite


def test_layer_norm_with_used_statistics_is_not_decomposed():
    model = build(
        """
g (float[2,5,16] x) => (float[2,5,16] y, float[2,5,1] mean) {
  y, mean = LayerNormalization <axis=-1> (x, w)
}""",
        opset=18,
        w=W16,
    )
    out, result = legalized(model, without("LayerNormalization"), LAYER_NORM)
    assert op_types(out) == ["LayerNormalization"] and not result.rules


@pytest.mark.parametrize("body,opset", [(LEGACY_CHAIN, 17), (HAND_CHAIN, 18)])
def test_round_trip_decompose_of_fuse(body, opset):
    model = build(body, opset=opset, w=W16, b=B16)
    fused, _ = legalized(model, ORT_OPS, LAYER_NORM)
    back, _ = legalized(fused, without("LayerNormalization"), LAYER_NORM)
    assert sorted(op_types(back)) == sorted(
        ["ReduceMean", "Sub", "Mul", "ReduceMean", "Add", "Sqrt", "Div", "Mul", "Add"]
    )
    assert_same_numerics(model, back)
