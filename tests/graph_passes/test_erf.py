"""Erf replacement for targets without Erf: a polynomial (A&S 7.1.26) or the tanh / sigmoid approximation."""

from __future__ import annotations

import numpy as np
import pytest

from vdeploy.graph_passes.rules.base import Direction
from vdeploy.graph_passes.rules.erf import ERF, ERF_POLYNOMIAL_MAX_ABS_ERROR, ERF_TANH_MAX_ABS_ERROR
from vdeploy.graph_passes.rules.gelu import GELU

from .helpers import ORT_OPS, build, legalized, op_types, run, without

SWEEP = "g (float[1,200001] x) => (float[1,200001] y) {\n y = Erf(x)\n}"
FEEDS = {"x": np.linspace(-10, 10, 200001, dtype=np.float32)[None]}


def test_kept_where_the_target_has_erf():
    model = build(SWEEP)
    out, result = legalized(model, ORT_OPS, ERF)
    assert op_types(out) == ["Erf"] and result.choices["erf"] == Direction.kept and not result.rules


@pytest.mark.parametrize(
    "target,rule,documented,fp32_slack",
    [
        (without("Erf"), "erf_polynomial", ERF_POLYNOMIAL_MAX_ABS_ERROR, 5e-7),  # float32 rounding of 10 ops
        (without("Erf", "Sign"), "erf_tanh_approx", ERF_TANH_MAX_ABS_ERROR, 1e-6),
        (without("Erf", "Sign", "Tanh"), "erf_sigmoid_approx", ERF_TANH_MAX_ABS_ERROR, 1e-6),
    ],
)
def test_replacement_meets_its_documented_error(target, rule, documented, fp32_slack):
    model = build(SWEEP)
    out, result = legalized(model, target, ERF)
    assert "Erf" not in op_types(out) and result.rules == {rule: 1}
    assert result.approximations == {rule: documented}
    err = float(np.abs(run(out, FEEDS)[0].astype(np.float64) - run(model, FEEDS)[0]).max())
    assert err <= documented + fp32_slack, err
    if documented > 1e-5:
        assert err >= 0.9 * documented  # the documented figure is the real one, not a loose bound


def test_gelu_runs_first_so_an_erf_form_gelu_is_replaced_whole():
    model = build("""
g (float[2,8] x) => (float[2,8] y) {
  rt2 = Constant <value = float {1.4142135}> ()
  half = Constant <value = float {0.5}> ()
  one = Constant <value = float {1.0}> ()
  s = Div(x, rt2)
  e = Erf(s)
  p = Add(e, one)
  h = Mul(half, p)
  y = Mul(x, h)
}""")
    out, result = legalized(model, without("Erf", "Sign"), GELU, ERF)
    assert result.rules == {"gelu_erf_to_tanh_approx": 1}
    assert "Erf" not in op_types(out)
