"""GELU, in all the forms a target may want.

Exported forms matched (each product in any association and operand order):
  erf form   x * 0.5 * (1 + Erf(x / sqrt2 | x * 1/sqrt2))                      (exact GELU)
  tanh form  x * 0.5 * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))  x^3 = Pow | x*x*x  (GELU's tanh variant)

Tiers, best first (Gelu is ONNX opset 20: legalization offers it only to models at opset >= 20):
- fused (needs Gelu):
  gelu_fusion: erf form => Gelu(x) · gelu_tanh_fusion: tanh form => Gelu(x, approximate="tanh")
- decomposed to Erf (needs Erf):
  gelu_decomposition: Gelu(x) => erf form · gelu_tanh_decomposition: Gelu(x, "tanh") => tanh form
- tanh approximation (no Erf; needs Tanh):
  gelu_to_tanh_approx: Gelu(x) => tanh form · gelu_erf_to_tanh_approx: erf form => tanh form
  (and gelu_tanh_decomposition)
- sigmoid approximation (no Erf, no Tanh; needs Sigmoid):
  gelu_to_sigmoid_approx: Gelu(x) => x * Sigmoid(1.702 x) · gelu_erf_to_sigmoid_approx: erf form => same
  gelu_tanh_to_sigmoid: Gelu(x, "tanh") | tanh form => x * Sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)), which equals
  the tanh form exactly (0.5 (1 + tanh y) = sigmoid(2y)).

Approximation error against exact GELU, max |approx(x) - gelu(x)| over x in [-12, 12] (float64, 2.4M points;
the error vanishes outside): tanh form 4.73e-4 (at x = 2.70), x*sigmoid(1.702x) 2.03e-2 (at x = -2.27).
In float32 through onnxruntime (tests/graph_passes/test_gelu.py, x in [-10, 10] step 1e-4): 4.73e-4 and 2.03e-2.
On the golden ViT/Swin the tanh form moves the logits by 1.5e-4 of their scale.
"""

from __future__ import annotations

import math

from onnxscript.rewriter.pattern import MatchResult, OrValue

from vdeploy.graph_passes.rules.base import Direction, Tier, TieredSpec, check_float, const, ops, opset_of, rules

GELU_TANH_MAX_ABS_ERROR = 4.73e-4
GELU_SIGMOID_MAX_ABS_ERROR = 2.03e-2
SQRT2 = math.sqrt(2.0)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
TANH_CUBIC = 0.044715
SIGMOID_SLOPE = 1.702
GELU_OPSET = 20


# ---- patterns ---------------------------------------------------------------------------------------------------


def _either(op, op_type, a, b):
    """a <op> b with the operands in either order (Add/Mul inside a pattern)."""
    return OrValue([getattr(op, op_type)(a, b), getattr(op, op_type)(b, a)])


def _erf_core(op, x):
    """1 + Erf(x / sqrt2)"""
    scaled = OrValue([op.Div(x, SQRT2), op.Mul(x, 1.0 / SQRT2), op.Mul(1.0 / SQRT2, x)])
    return _either(op, "Add", op.Erf(scaled), 1.0)


def _tanh_core(op, x):
    """1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3))"""
    cube = OrValue([op.Pow(x, 3.0), op.Mul(x, op.Mul(x, x)), op.Mul(op.Mul(x, x), x)])
    inner = _either(op, "Add", x, _either(op, "Mul", TANH_CUBIC, cube))
    return _either(op, "Add", op.Tanh(_either(op, "Mul", SQRT_2_OVER_PI, inner)), 1.0)


def _products(core):
    """Patterns for the product x * 0.5 * core(x): one per outermost factor and operand order of the root Mul."""

    def make(outer: str, swap: bool):
        def pattern(op, x):
            factors = {"x": x, "half": 0.5, "core": core(op, x)}
            inner = _either(op, "Mul", *[v for k, v in factors.items() if k != outer])
            return op.Mul(factors[outer], inner) if swap else op.Mul(inner, factors[outer])

        return pattern

    return tuple(make(outer, swap) for outer in ("x", "half", "core") for swap in (False, True))


def _gelu_node(op, x):
    return op.Gelu(x, _outputs=["y"])


# ---- checks -----------------------------------------------------------------------------------------------------


def _approximate(y) -> str:
    attr = y.producer().attributes.get("approximate")
    return "none" if attr is None else attr.as_string()


def _check_fusable(context, x, **_) -> MatchResult:
    result = check_float(context, x)
    if result and opset_of(x) < GELU_OPSET:
        return result.fail(f"Gelu needs opset {GELU_OPSET}; the model imports {opset_of(x)}", x)
    return result


def _check_exact_gelu(context, x, y, **_) -> MatchResult:
    result = MatchResult()
    return result if _approximate(y) == "none" else result.fail("Gelu is the tanh variant", y)


def _check_tanh_gelu(context, x, y, **_) -> MatchResult:
    result = MatchResult()
    return result if _approximate(y) == "tanh" else result.fail("Gelu is the exact (erf) variant", y)


# ---- replacements -----------------------------------------------------------------------------------------------


def _to_gelu(op, x, **_):
    return op.Gelu(x)


def _to_gelu_tanh(op, x, **_):
    return op.Gelu(x, approximate="tanh")


def _erf_form(op, x, **_):
    """x * (0.5 * (1 + Erf(x / sqrt2)))"""
    one_plus = op.Add(op.Erf(op.Div(x, const(op, SQRT2, x))), const(op, 1.0, x))
    return op.Mul(x, op.Mul(const(op, 0.5, x), one_plus))


def _tanh_argument(op, x, factor: float = 1.0):
    """factor * sqrt(2/pi) * (x + 0.044715 * x*x*x)"""
    cube = op.Mul(op.Mul(x, x), x)
    inner = op.Add(x, op.Mul(const(op, TANH_CUBIC, x), cube))
    return op.Mul(const(op, factor * SQRT_2_OVER_PI, x), inner)


def _tanh_form(op, x, **_):
    """x * (0.5 * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 x^3))))"""
    one_plus = op.Add(op.Tanh(_tanh_argument(op, x)), const(op, 1.0, x))
    return op.Mul(x, op.Mul(const(op, 0.5, x), one_plus))


def _sigmoid_form(op, x, **_):
    """x * Sigmoid(1.702 x)"""
    return op.Mul(x, op.Sigmoid(op.Mul(const(op, SIGMOID_SLOPE, x), x)))


def _tanh_as_sigmoid(op, x, **_):
    """x * Sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)): the tanh form, exactly."""
    return op.Mul(x, op.Sigmoid(_tanh_argument(op, x, factor=2.0)))


ERF_FORM = _products(_erf_core)
TANH_FORM = _products(_tanh_core)
GELU_NODE = (_gelu_node,)

GELU_FUSION = rules("gelu_fusion", ERF_FORM, _to_gelu, _check_fusable)
GELU_TANH_FUSION = rules("gelu_tanh_fusion", TANH_FORM, _to_gelu_tanh, _check_fusable)
GELU_DECOMPOSITION = rules("gelu_decomposition", GELU_NODE, _erf_form, _check_exact_gelu)
GELU_TANH_DECOMPOSITION = rules("gelu_tanh_decomposition", GELU_NODE, _tanh_form, _check_tanh_gelu)
GELU_TO_TANH = rules("gelu_to_tanh_approx", GELU_NODE, _tanh_form, _check_exact_gelu)
GELU_ERF_TO_TANH = rules("gelu_erf_to_tanh_approx", ERF_FORM, _tanh_form, check_float)
GELU_TO_SIGMOID = rules("gelu_to_sigmoid_approx", GELU_NODE, _sigmoid_form, _check_exact_gelu)
GELU_ERF_TO_SIGMOID = rules("gelu_erf_to_sigmoid_approx", ERF_FORM, _sigmoid_form, check_float)
GELU_TANH_TO_SIGMOID = (
    *rules("gelu_tanh_to_sigmoid", GELU_NODE, _tanh_as_sigmoid, _check_tanh_gelu),
    *rules("gelu_tanh_to_sigmoid", TANH_FORM, _tanh_as_sigmoid, check_float),
)

GELU = TieredSpec(
    name="gelu",
    tiers=(
        Tier(Direction.fused, ops("Gelu"), (*GELU_FUSION, *GELU_TANH_FUSION)),
        Tier(Direction.decomposed, ops("Erf", "Mul", "Add", "Div"), (*GELU_DECOMPOSITION, *GELU_TANH_DECOMPOSITION)),
        Tier(
            Direction.decomposed,
            ops("Tanh", "Mul", "Add"),
            (*GELU_TO_TANH, *GELU_ERF_TO_TANH, *GELU_TANH_DECOMPOSITION),
        ),
        Tier(
            Direction.decomposed,
            ops("Sigmoid", "Mul", "Add"),
            (*GELU_TO_SIGMOID, *GELU_ERF_TO_SIGMOID, *GELU_TANH_TO_SIGMOID),
        ),
    ),
    approximations={
        "gelu_to_tanh_approx": GELU_TANH_MAX_ABS_ERROR,
        "gelu_erf_to_tanh_approx": GELU_TANH_MAX_ABS_ERROR,
        "gelu_to_sigmoid_approx": GELU_SIGMOID_MAX_ABS_ERROR,
        "gelu_erf_to_sigmoid_approx": GELU_SIGMOID_MAX_ABS_ERROR,
    },
)
