"""The rule-spec contract: one op family, both directions.

Legalization picks ``fuse_rules`` when the target's op set has ``big_op``, else ``decompose_rules``.
Each rule is an onnxscript ``RewriteRule`` with a ``name``; legalization stamps that name on every node the
rule creates (node metadata key ``RULE_KEY``) and counts matches per rule for the manifest.

A family with more than two outcomes (GELU: Gelu / Erf form / tanh or sigmoid approximation) is a ``TieredSpec``:
an ordered list of ``Tier(direction, needs, rules)``; the first tier whose ``needs`` the op set covers wins.
Both kinds expose ``name``, ``choose(op_set) -> (Direction, rules)`` and ``approximations`` (rule name -> the
documented max abs error of an approximating rule, for the manifest).

The helpers at the end are for writing rewrites that emit ops legal at the model's opset (Reduce* axes moved from
attribute to input at opset 18; ReduceSum at 13) and constants typed like the value they combine with.
"""

from __future__ import annotations

import enum
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter.pattern import MatchResult, RewriteRule

from vdeploy.graph_passes.ops import OpId

FLOAT_TYPES = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE})
NOT_FLOAT = "input is not a float tensor (or its type is unknown)"

RULE_KEY = "vdeploy.rule"
INTERNAL_DOMAIN = "vdeploy.internal"  # private ops; none may survive legalization
NO_APPROXIMATIONS: Mapping[str, float] = types.MappingProxyType({})


class Direction(str, enum.Enum):
    """What legalization did with a family (a str, so it compares equal to 'fused' / 'decomposed')."""

    fused = "fused"
    decomposed = "decomposed"
    kept = "kept"  # the target runs the family as exported; no rule applies


@dataclass(frozen=True)
class RuleSpec:
    """One op family: the fused op, the rules that form it, the rules that take it apart."""

    name: str  # family, e.g. "layer_norm"
    big_op: OpId  # e.g. OpId("", "LayerNormalization")
    fuse_rules: tuple[RewriteRule, ...]
    decompose_rules: tuple[RewriteRule, ...]
    approximations: Mapping[str, float] = field(default_factory=lambda: NO_APPROXIMATIONS)

    def choose(self, op_set: frozenset) -> tuple[Direction, tuple[RewriteRule, ...]]:
        """(fused, fuse_rules) when the target has big_op, else (decomposed, decompose_rules)."""
        if self.big_op in op_set:
            return Direction.fused, self.fuse_rules
        return Direction.decomposed, self.decompose_rules


@dataclass(frozen=True)
class Tier:
    """One outcome of a family: the rules to run and the ops they need (big op included for a fused tier)."""

    direction: Direction
    needs: frozenset  # frozenset[OpId]
    rules: tuple[RewriteRule, ...]


@dataclass(frozen=True)
class TieredSpec:
    """A family with several outcomes, best first. choose() takes the first tier the op set covers; when none is
    covered, the tier missing the fewest ops (earliest on a tie), so the leftovers are as few as possible."""

    name: str
    tiers: tuple[Tier, ...]
    approximations: Mapping[str, float] = field(default_factory=lambda: NO_APPROXIMATIONS)

    def choose(self, op_set: frozenset) -> tuple[Direction, tuple[RewriteRule, ...]]:
        best = min(self.tiers, key=lambda tier: len(tier.needs - op_set))  # min() keeps the first of equals
        return best.direction, best.rules


def ops(*names: str) -> frozenset:
    """ops('Mul', 'com.microsoft::Gelu') -> frozenset of OpId."""
    return frozenset(OpId.parse(n) for n in names)


# ---- helpers for rewrite functions ---------------------------------------------------------------------------

# Reduce ops take `axes` as an input from this default-domain opset on (before: an attribute).
_AXES_AS_INPUT_SINCE = {"ReduceSum": 13}  # every other Reduce*: 18


def opset_of(value: ir.Value, domain: str = "") -> int:
    """The model's opset for `domain`, read from the graph that owns `value` (graph input, initializer or output)."""
    graph = value.graph if value.producer() is None else value.producer().graph
    imports = graph.opset_imports if graph is not None else {}
    version = imports.get(domain) or (imports.get("ai.onnx") if domain == "" else None)
    if version is None:
        raise ValueError(f"cannot tell the opset of {value.name!r} (no opset import for domain {domain!r})")
    return version


def axes_attr(node: ir.Node) -> list[int] | None:
    """A Reduce* node's axes, from its input (opset >= 18) or attribute; None when not a constant."""
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        const = node.inputs[1].const_value
        return None if const is None else [int(a) for a in const.numpy().reshape(-1)]
    attr = node.attributes.get("axes")
    return None if attr is None else list(attr.as_ints())


def int_attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return default if attr is None else attr.as_int()


def const(op, value, like: ir.Value | None = None, dtype: ir.DataType | None = None) -> ir.Value:
    """A Constant with the element type of `like` (or `dtype`; float32 when neither is known)."""
    dtype = dtype or (like.dtype if like is not None and like.dtype is not None else ir.DataType.FLOAT)
    tensor = ir.Tensor(np.asarray(value, dtype=dtype.numpy()))
    return op.Constant(value=ir.AttrTensor("value", tensor))  # an Attr skips onnx-ir's slow type inference


def reduce(op, op_type: str, x: ir.Value, axes: Sequence[int], opset: int, keepdims: int = 1) -> ir.Value:
    """Reduce* over `axes` in the form the opset wants (axes as an input or as an attribute)."""
    if opset >= _AXES_AS_INPUT_SINCE.get(op_type, 18):
        return op.op(op_type, x, const(op, list(axes), dtype=ir.DataType.INT64), keepdims=keepdims)
    return op.op(op_type, x, axes=list(axes), keepdims=keepdims)


def trailing_axes(axes: Sequence[int], rank: int | None) -> int | None:
    """k when `axes` are exactly the last k axes (e.g. [-1], [2] of rank 3, [-2, -1]); else None."""
    if not axes:
        return None
    if any(a >= 0 for a in axes):
        if rank is None:
            return None
        axes = [a - rank if a >= 0 else a for a in axes]
    k = len(axes)
    return k if sorted(axes) == list(range(-k, 0)) else None


def static_shape(value: ir.Value) -> tuple[int, ...] | None:
    """The value's shape when every dimension is a known int; else None."""
    shape = value.shape
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return tuple(shape)


def scalar(value: ir.Value | None) -> float | None:
    """The float in a one-element constant, else None."""
    if value is None or value.const_value is None:
        return None
    array = value.const_value.numpy()
    return float(array.reshape(-1)[0]) if array.size == 1 else None


def rules(name: str, patterns, rewrite, check) -> tuple[RewriteRule, ...]:
    """One rule per pattern, all named `name` and sharing the rewrite and the check."""
    return tuple(RewriteRule(p, rewrite, check, name=name) for p in patterns)


def check_float(context, x, **_) -> MatchResult:
    """The check of rules that only need a float input `x`."""
    result = MatchResult()
    return result if x.dtype in FLOAT_TYPES else result.fail(NOT_FLOAT, x)
