"""GELU rules: erf/tanh forms -> Gelu (opset 20); Gelu -> erf form; approximations for targets without Erf."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from vdeploy.graph_passes.rules.base import Direction
from vdeploy.graph_passes.rules.gelu import GELU, GELU_SIGMOID_MAX_ABS_ERROR, GELU_TANH_MAX_ABS_ERROR

from .helpers import ORT_OPS, assert_same_numerics, build, legalized, op_types, run, without

SIG = "g (float[2,8,32] x) => (float[2,8,32] y)"
CONSTS = """
  rt2 = Constant <value = float {1.4142135}> ()
  inv_rt2 = Constant <value = float {0.70710677}> ()
  half = Constant <value = float {0.5}> ()
  one = Constant <value = float {1.0}> ()
  three = Constant <value = float {3.0}> ()
  k = Constant <value = float {0.044715}> ()
  c = Constant <value = float {0.7978846}> ()"""

ERF_FORMS = {  # the exporters' spellings of x * 0.5 * (1 + erf(x / sqrt2))
    "dynamo": "s = Div(x, rt2)\n e = Erf(s)\n p = Add(e, one)\n h = Mul(half, p)\n y = Mul(x, h)",
    "legacy": "s = Div(x, rt2)\n e = Erf(s)\n p = Add(e, one)\n xp = Mul(x, p)\n y = Mul(xp, half)",
    "hand": "hx = Mul(x, half)\n s = Mul(x, inv_rt2)\n e = Erf(s)\n p = Add(one, e)\n y = Mul(hx, p)",
}
TANH_FORMS = {  # x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
    "dynamo": "x3 = Pow(x, three)\n kx3 = Mul(x3, k)\n i = Add(x, kx3)\n a = Mul(i, c)\n t = Tanh(a)\n"
    " p = Add(t, one)\n h = Mul(half, p)\n y = Mul(x, h)",
    "legacy": "xx = Mul(x, x)\n x3 = Mul(x, xx)\n kx3 = Mul(k, x3)\n i = Add(x, kx3)\n a = Mul(c, i)\n"
    " t = Tanh(a)\n p = Add(one, t)\n xp = Mul(x, p)\n y = Mul(half, xp)",
}


def form(body: str, opset: int = 20, signature: str = SIG) -> onnx.ModelProto:
    return build(f"{signature} {{{CONSTS}\n {body}\n}}", opset=opset)


def gelu_node(approximate: str = "none", signature: str = SIG) -> onnx.ModelProto:
    return build(f'{signature} {{\n y = Gelu <approximate="{approximate}"> (x)\n}}', opset=20)


@pytest.mark.parametrize("name", sorted(ERF_FORMS))
def test_erf_forms_fuse_to_gelu(name):
    model = form(ERF_FORMS[name])
    out, result = legalized(model, ORT_OPS, GELU)
    assert op_types(out) == ["Gelu"] and result.rules == {"gelu_fusion": 1}
    assert_same_numerics(model, out, scale=3.0)


@pytest.mark.parametrize("name", sorted(TANH_FORMS))
def test_tanh_forms_fuse_to_gelu_tanh(name):
    model = form(TANH_FORMS[name])
    out, result = legalized(model, ORT_OPS, GELU)
    assert op_types(out) == ["Gelu"] and result.rules == {"gelu_tanh_fusion": 1}
    assert [a.s for a in out.graph.node[-1].attribute] == [b"tanh"]
    assert_same_numerics(model, out, scale=3.0)


def test_no_fusion_below_opset_20():
    model = form(ERF_FORMS["dynamo"], opset=18)
    out, result = legalized(model, ORT_OPS, GELU)  # Gelu is in the op set, but not usable at opset 18
    assert result.choices["gelu"] == Direction.decomposed
    assert op_types(out) == op_types(model) and not result.rules


@pytest.mark.parametrize(
    "case,body",
    [
        ("0.6 instead of 0.5", ERF_FORMS["dynamo"].replace("half", "six")),
        ("erf argument is another tensor", ERF_FORMS["legacy"].replace("s = Div(x, rt2)", "s = Div(z, rt2)")),
        ("cubic term 0.05", TANH_FORMS["dynamo"].replace("Mul(x3, k)", "Mul(x3, six)")),
    ],
)
def test_fusion_negatives(case, body):
    sig = "g (float[2,8,32] x, float[2,8,32] z) => (float[2,8,32] y)"
    model = form(f"six = Constant <value = float {{0.6}}> ()\n {body}", signature=sig)
    out, result = legalized(model, ORT_OPS, GELU)
    assert op_types(out) == op_types(model) and not result.rules, case


def test_fusion_blocked_when_an_inner_value_is_used_elsewhere():
    sig = "g (float[2,8,32] x) => (float[2,8,32] y, float[2,8,32] e)"
    model = form(ERF_FORMS["dynamo"], signature=sig)
    out, result = legalized(model, ORT_OPS, GELU)
    assert "Gelu" not in op_types(out) and not result.rules


def test_decomposition_to_erf_form():
    model = gelu_node()
    out, result = legalized(model, without("Gelu"), GELU)
    assert sorted(op_types(out)) == ["Add", "Div", "Erf", "Mul", "Mul"]
    assert result.decomposed == {"gelu": 1} and not result.approximations
    assert_same_numerics(model, out, scale=3.0)


def test_tanh_gelu_decomposes_to_tanh_form_exactly():
    model = gelu_node("tanh")
    out, result = legalized(model, without("Gelu"), GELU)
    assert "Tanh" in op_types(out) and result.rules == {"gelu_tanh_decomposition": 1}
    assert_same_numerics(model, out, scale=3.0)


@pytest.mark.parametrize("name", sorted(ERF_FORMS))
def test_round_trip_decompose_of_fuse(name):
    model = form(ERF_FORMS[name])
    fused, _ = legalized(model, ORT_OPS, GELU)
    back, _ = legalized(fused, without("Gelu"), GELU)
    assert sorted(op_types(back)) == ["Add", "Div", "Erf", "Mul", "Mul"]  # the hand form had Mul by 1/sqrt2
    assert_same_numerics(model, back, scale=3.0)


SWEEP = "g (float[1,200001] x) => (float[1,200001] y)"


def sweep_error(exact: onnx.ModelProto, approx: onnx.ModelProto) -> float:
    """max |approx - exact| over x in [-10, 10] (step 1e-4)."""
    feeds = {"x": np.linspace(-10, 10, 200001, dtype=np.float32)[None]}
    return float(np.abs(run(approx, feeds)[0].astype(np.float64) - run(exact, feeds)[0]).max())


@pytest.mark.parametrize(
    "target,rule,documented",
    [
        (without("Gelu", "Erf"), "gelu_to_tanh_approx", GELU_TANH_MAX_ABS_ERROR),
        (without("Gelu", "Erf", "Tanh"), "gelu_to_sigmoid_approx", GELU_SIGMOID_MAX_ABS_ERROR),
    ],
)
def test_approximations_meet_their_documented_error(target, rule, documented):
    model = gelu_node(signature=SWEEP)
    out, result = legalized(model, target, GELU)
    assert "Erf" not in op_types(out) and result.rules == {rule: 1}
    assert result.approximations == {rule: documented}
    err = sweep_error(model, out)
    assert 0.9 * documented <= err <= documented * 1.01 + 1e-6, err


@pytest.mark.parametrize(
    "target,rule",
    [
        (without("Gelu", "Erf"), "gelu_erf_to_tanh_approx"),
        (without("Gelu", "Erf", "Tanh"), "gelu_erf_to_sigmoid_approx"),
    ],
)
def test_erf_form_is_approximated_without_erf(target, rule):
    model = form(ERF_FORMS["legacy"], signature=SWEEP)
    out, result = legalized(model, target, GELU)
    assert "Erf" not in op_types(out) and result.rules == {rule: 1}
    assert sweep_error(model, out) <= result.approximations[rule] * 1.01 + 1e-6


def test_tanh_form_to_sigmoid_is_exact():
    model = form(TANH_FORMS["legacy"])
    out, result = legalized(model, without("Gelu", "Erf", "Tanh"), GELU)
    assert "Tanh" not in op_types(out) and "Sigmoid" in op_types(out)
    assert result.rules == {"gelu_tanh_to_sigmoid": 1} and not result.approximations
    assert_same_numerics(model, out, scale=3.0)
