"""Erf, replaced for targets without it (GELU runs first, so this sees only Erfs outside a GELU).

There is no fuse direction: no exporter spells erf as anything but Erf, so a target with Erf keeps it.
Tiers, best first:
- kept (needs Erf).
- erf_polynomial: Erf(x)  =>  Sign(x) * (1 - t(a1 + t(a2 + t(a3 + t(a4 + t a5)))) * Exp(-x*x)), t = 1 / (1 + p|x|)
  (Abramowitz & Stegun 7.1.26; needs Abs, Sign, Exp, Div).
- erf_tanh_approx: Erf(x)  =>  Tanh(2/sqrt(pi) * (x + 0.08943 x^3))  (GELU's tanh approximation, rescaled).
- erf_sigmoid_approx: Erf(x)  =>  2 * Sigmoid(4/sqrt(pi) * (x + 0.08943 x^3)) - 1  (the same, as tanh y = 2s(2y)-1).

Max |approx(x) - erf(x)| over x in [-12, 12] (float64, 2.4M points): polynomial 1.39e-7, tanh/sigmoid 3.58e-4
(at x = -1.83). Evaluated in float32 through onnxruntime (tests/graph_passes/test_erf.py, x in [-10, 10] step 1e-4):
polynomial 4.6e-7 (float32 rounding of its ten ops), tanh 3.58e-4, sigmoid 3.58e-4.
"""

from __future__ import annotations

import math

from onnxscript.rewriter.pattern import RewriteRule

from vdeploy.graph_passes.rules.base import Direction, Tier, TieredSpec, check_float, const, ops

ERF_POLYNOMIAL_MAX_ABS_ERROR = 1.39e-7
ERF_TANH_MAX_ABS_ERROR = 3.58e-4
_P = 0.3275911
_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
_CUBIC = 2 * 0.044715  # GELU's 0.044715 after x -> sqrt2 x
_SLOPE = 2 / math.sqrt(math.pi)


def _erf(op, x):
    return op.Erf(x)


def _polynomial(op, x):
    t = op.Div(const(op, 1.0, x), op.Add(op.Mul(const(op, _P, x), op.Abs(x)), const(op, 1.0, x)))
    poly = const(op, _A[-1], x)
    for a in reversed(_A[:-1]):
        poly = op.Add(const(op, a, x), op.Mul(t, poly))
    tail = op.Mul(op.Mul(t, poly), op.Exp(op.Mul(op.Mul(x, x), const(op, -1.0, x))))
    return op.Mul(op.Sign(x), op.Sub(const(op, 1.0, x), tail))


def _argument(op, x, factor: float):
    """factor * 2/sqrt(pi) * (x + 0.08943 x^3)"""
    cube = op.Mul(op.Mul(x, x), x)
    return op.Mul(const(op, factor * _SLOPE, x), op.Add(x, op.Mul(const(op, _CUBIC, x), cube)))


def _tanh(op, x):
    return op.Tanh(_argument(op, x, 1.0))


def _sigmoid(op, x):
    return op.Add(op.Mul(const(op, 2.0, x), op.Sigmoid(_argument(op, x, 2.0))), const(op, -1.0, x))


ERF = TieredSpec(
    name="erf",
    tiers=(
        Tier(Direction.kept, ops("Erf"), ()),
        Tier(
            Direction.decomposed,
            ops("Abs", "Sign", "Exp", "Mul", "Add", "Sub", "Div"),
            (RewriteRule(_erf, _polynomial, check_float, name="erf_polynomial"),),
        ),
        Tier(
            Direction.decomposed,
            ops("Tanh", "Mul", "Add"),
            (RewriteRule(_erf, _tanh, check_float, name="erf_tanh_approx"),),
        ),
        Tier(
            Direction.decomposed,
            ops("Sigmoid", "Mul", "Add"),
            (RewriteRule(_erf, _sigmoid, check_float, name="erf_sigmoid_approx"),),
        ),
    ),
    approximations={
        "erf_polynomial": ERF_POLYNOMIAL_MAX_ABS_ERROR,
        "erf_tanh_approx": ERF_TANH_MAX_ABS_ERROR,
        "erf_sigmoid_approx": ERF_TANH_MAX_ABS_ERROR,
    },
)
