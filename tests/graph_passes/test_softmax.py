"""Softmax rules: Softmax -> max-subtracted Exp/ReduceSum/Div, and the chain back to Softmax."""

from __future__ import annotations

import pytest

from vdeploy.graph_passes.rules.softmax import SOFTMAX

from .helpers import ORT_OPS, assert_same_numerics, build, legalized, op_types, without

CHAIN_18 = """
g (float[2,4,10] x) => (float[2,4,10] y) {
  axes = Constant <value = int64[1] {-1}> ()
  m = ReduceMax <keepdims=1> (x, axes)
  d = Sub(x, m)
  e = Exp(d)
  s = ReduceSum <keepdims=1> (e, axes)
  y = Div(e, s)
}"""


@pytest.mark.parametrize("opset,axis", [(13, 1), (17, -1), (18, -1), (18, 0)])
def test_decomposition(opset, axis):
    model = build(f"g (float[2,4,10] x) => (float[2,4,10] y) {{\n y = Softmax <axis={axis}> (x)\n}}", opset=opset)
    out, result = legalized(model, without("Softmax"), SOFTMAX)
    assert op_types(out) == ["ReduceMax", "Sub", "Exp", "ReduceSum", "Div"]
    assert result.decomposed == {"softmax": 1}
    reduce_max = next(n for n in out.graph.node if n.op_type == "ReduceMax")
    assert (len(reduce_max.input) == 2) == (opset >= 18)  # axes input from opset 18
    assert_same_numerics(model, out, scale=30.0)  # large logits: the max subtraction keeps Exp finite


def test_fusion_of_max_subtracted_chain():
    model = build(CHAIN_18)
    out, result = legalized(model, ORT_OPS, SOFTMAX)
    assert op_types(out) == ["Softmax"] and result.fused == {"softmax": 1}
    assert_same_numerics(model, out)


def test_fusion_of_unshifted_chain_opset_13():
    model = build(
        """
g (float[2,4,10] x) => (float[2,4,10] y) {
  e = Exp(x)
  axes = Constant <value = int64[1] {1}> ()
  s = ReduceSum <keepdims=1> (e, axes)
  y = Div(e, s)
}""",
        opset=13,
    )
    out, _ = legalized(model, ORT_OPS, SOFTMAX)
    assert op_types(out) == ["Softmax"]
    assert [a.i for a in out.graph.node[-1].attribute] == [-2]
    assert_same_numerics(model, out)


@pytest.mark.parametrize(
    "case,old,new",
    [
        ("sum over another axis", "s = ReduceSum <keepdims=1> (e, axes)", "s = ReduceSum <keepdims=1> (e, ax0)"),
        ("max over another axis", "m = ReduceMax <keepdims=1> (x, axes)", "m = ReduceMax <keepdims=1> (x, ax0)"),
        (
            "sum without keepdims",
            "s = ReduceSum <keepdims=1> (e, axes)\n  y = Div(e, s)",
            "s = ReduceSum <keepdims=0> (e, axes)\n  s1 = Unsqueeze(s, axes)\n  y = Div(e, s1)",
        ),
    ],
)
def test_fusion_negatives(case, old, new):
    body = CHAIN_18.replace(old, new).replace("{\n", "{\n  ax0 = Constant <value = int64[1] {0}> ()\n", 1)
    model = build(body)
    out, result = legalized(model, ORT_OPS, SOFTMAX)
    assert "Softmax" not in op_types(out) and not result.rules, case


def test_round_trip_fuse_of_decompose():
    model = build("g (float[2,4,10] x) => (float[2,4,10] y) {\n y = Softmax <axis=-1> (x)\n}")
    decomposed, _ = legalized(model, without("Softmax"), SOFTMAX)
    back, _ = legalized(decomposed, ORT_OPS, SOFTMAX)
    assert op_types(back) == ["Softmax"]
    assert_same_numerics(model, back)


def test_round_trip_decompose_of_fuse():
    model = build(CHAIN_18)
    fused, _ = legalized(model, ORT_OPS, SOFTMAX)
    back, _ = legalized(fused, without("Softmax"), SOFTMAX)
    assert op_types(back) == op_types(model)
    assert_same_numerics(model, back)
