"""Levers: the choices a build plan takes that trade cost for accuracy, and the plan they make (Choices).

A Lever = a name + its candidate values for this target and model + how a value sets the Choices + the plan stage a
change re-runs from. Choices -> BuildRequest fields (runtime, precision, int8_sensitive, forms, input_shape,
prune_heads) -> the ordinary build plan. A new lever is one more Lever row in `levers_for`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vdeploy.fit.forms import FAMILIES, FORMS, default_form
from vdeploy.prune_stage import HeadPruning
from vdeploy.runtimes import offers, runtime_names


@dataclass(frozen=True)
class Choices:
    """One plan: every lever's value. None / () / "auto" mean the build's defaults."""

    runtime: str | None = None
    precision: str | None = None
    int8_sensitive: int | str = "auto"  # INT8 float fallback: "auto" (fewest float layers that pass the gate) or N
    forms: tuple[tuple[str, str], ...] = ()  # (family, form), non-default forms only, sorted
    input_size: tuple[int, int] | None = None  # (H, W) when the resolution lever changed it
    prune_heads: HeadPruning | None = None  # attention heads removed: a count by measured importance, or a keep plan

    def with_form(self, family: str, name: str) -> Choices:
        rest = [(f, n) for f, n in self.forms if f != family]
        if name != default_form(family):
            rest.append((family, name))
        return dataclasses.replace(self, forms=tuple(sorted(rest)))

    def form_of(self, family: str) -> str:
        return dict(self.forms).get(family, default_form(family))

    def label(self) -> str:
        parts = [self.runtime or "default runtime", self.precision or "default precision"]
        if self.precision == "int8" and self.int8_sensitive != "auto":
            parts.append(f"{self.int8_sensitive} float layers")
        parts += [f"{f}={n}" for f, n in self.forms]
        if self.input_size:
            parts.append(f"{self.input_size[0]}x{self.input_size[1]}")
        if self.prune_heads:
            p = self.prune_heads
            parts.append(f"prune {p.count} head(s)" if p.count else f"prune per plan ({len(p.keep)} blocks)")
        return " · ".join(parts)

    def to_dict(self) -> dict:
        return {
            "runtime": self.runtime,
            "precision": self.precision,
            "int8_sensitive": self.int8_sensitive,
            "forms": dict(self.forms),
            "input_size": list(self.input_size) if self.input_size else None,
            "prune_heads": self.prune_heads.to_json() if self.prune_heads else None,
        }

    def request(self, base, input_shape: tuple[int, ...] | None = None):
        """The BuildRequest that builds this plan (the other options stay the base request's)."""
        return dataclasses.replace(
            base,
            runtime=self.runtime,
            precision=self.precision,
            int8_sensitive=self.int8_sensitive,
            forms=self.forms,
            input_shape=input_shape if self.input_size else base.input_shape,
            prune_heads=self.prune_heads,
        )


@dataclass(frozen=True)
class Lever:
    name: str
    resume: str  # the plan stage a change of this lever re-runs from
    values: tuple  # candidate values, the baseline's first
    apply: Callable[[Choices, Any], Choices]
    get: Callable[[Choices], Any]
    note: str = ""  # what a value costs or risks (documented errors, contract changes)


@dataclass(frozen=True)
class LeverContext:
    """What the levers need to know: the target, the baseline legal graph's op census, the model's input."""

    target: Any  # vdeploy.targets.Target (the catalogue's, before any runtime change)
    families: frozenset  # rule families with ops in the model (gelu, softmax, attention, ...)
    input_hw: tuple[int, int] | None  # (H, W) of a single image input, else None
    allow_resize: bool = False
    int8_fallbacks: tuple = ()  # extra --int8-sensitive values to try beside "auto"
    heads: int = 0  # attention heads the prune pass can remove (0: no prunable attention block)


def _precisions(target) -> tuple[str, ...]:
    """Every precision some runtime of the target offers, the target's default first."""
    names = runtime_names(target)
    all_p = [p.value for p in target.spec.precisions]
    offered = [p for p in all_p if any(offers(target, r, p) for r in names)]
    default = target.spec.default_precision.value
    return (default, *(p for p in offered if p != default))


def resolutions(hw: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """Smaller inputs to try: the baseline, then 32-pixel steps down (three at most, not below 64)."""
    h, w = hw
    steps = [(h - 32 * k, w - 32 * k) for k in range(1, 4) if min(h, w) - 32 * k >= 64]
    return (hw, *steps)


PRUNE_SHARES = (1 / 12, 1 / 6, 1 / 3)  # of the model's prunable heads, rounded (deit_tiny's 36: 3, 6, 12)


def prune_counts(heads: int) -> tuple[int, ...]:
    """Head counts to try removing: none, then a twelfth, a sixth and a third of the prunable heads (at least 1,
    always leaving some)."""
    counts = sorted({max(1, round(heads * share)) for share in PRUNE_SHARES})
    return (0, *(c for c in counts if c < heads))


def levers_for(ctx: LeverContext) -> tuple[Lever, ...]:
    """The levers that can change something for this target and model (a lever with one value is left out)."""
    target = ctx.target
    levers = [
        Lever(
            "runtime",
            "legalize",
            tuple(runtime_names(target)),
            lambda c, v: dataclasses.replace(c, runtime=v),
            lambda c: c.runtime,
            "each runtime on the graph legalized for its own op profile (targets.yaml runtimes:)",
        ),
        Lever(
            "precision",
            "precision",
            _precisions(target),
            lambda c, v: dataclasses.replace(c, precision=v),
            lambda c: c.precision,
            "INT8: calibrated, with automatic per-layer float fallback from the measured sensitivity",
        ),
    ]
    if "int8" in _precisions(target) and ctx.int8_fallbacks:
        levers.append(
            Lever(
                "int8_sensitive",
                "precision",
                ("auto", *ctx.int8_fallbacks),
                lambda c, v: dataclasses.replace(c, int8_sensitive=v),
                lambda c: c.int8_sensitive,
                "INT8 layers kept in float, most sensitive first (docs/int8.md)",
            )
        )
    for family in FAMILIES:
        if family in ctx.families:
            levers.append(_form_lever(family))
    if ctx.allow_resize and ctx.input_hw:
        levers.append(
            Lever(
                "input_size",
                "reference",
                resolutions(ctx.input_hw),
                lambda c, v: dataclasses.replace(c, input_size=None if v == ctx.input_hw else tuple(v)),
                lambda c: c.input_size or ctx.input_hw,
                "changes the model's input contract: allowed only with --fit-allow-resize; judged against the "
                "reference at the original size on the same images, resized",
            )
        )
    if ctx.heads:
        levers.append(
            Lever(
                "prune",
                "prune",
                prune_counts(ctx.heads),
                lambda c, v: dataclasses.replace(c, prune_heads=HeadPruning(count=v) if v else None),
                lambda c: c.prune_heads.to_json() if c.prune_heads else 0,
                "attention heads removed in the graph, least important first (ablation on the validation samples); "
                "judged against the unpruned model (docs/pruning.md)",
            )
        )
    return tuple(lever for lever in levers if len(lever.values) > 1)


def _form_lever(family: str) -> Lever:
    def apply(c: Choices, v) -> Choices:
        return c.with_form(family, v)

    def get(c: Choices):
        return c.form_of(family)

    documented = [f for f in FORMS if f.family == family and f.max_abs_error is not None]
    note = "; ".join(f"{f.name}: max abs error {f.max_abs_error:g} ({f.where})" for f in documented)
    return Lever(family, "legalize", tuple(f.name for f in FORMS if f.family == family), apply, get, note)


FAMILY_OPS = {  # ops whose presence in the canonical graph makes a form family worth trying
    "gelu": ("Erf", "Gelu", "Tanh"),
    "erf": ("Erf", "Gelu"),
    "softmax": ("Softmax", "Exp"),
    "attention": ("Softmax",),
    "layer_norm": ("LayerNormalization", "ReduceMean"),
}


def families_in(model) -> frozenset:
    """Rule families worth a form choice: those whose ops occur in the (canonical) onnx.ModelProto."""
    present = {node.op_type for node in model.graph.node}
    return frozenset(f for f, op_types in FAMILY_OPS.items() if present & set(op_types))
