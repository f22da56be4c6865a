"""Approximation and fusion forms per op family: legalization choices the plan can take (the approximation lever).

(family, form) pairs -> each named family's rule spec wrapped so it chooses as if the target lacked some ops
(gelu=tanh hides Gelu and Erf, so GELU's tanh tier is taken) -> the specs legalize() runs. Hiding only narrows what
a family may emit: the legal graph still uses the target's op set, nothing else.
Errors are the rule families' documented max abs errors against the exact op (graph_passes/rules/*.py docstrings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vdeploy.errors import UsageError
from vdeploy.graph_passes.rules.attention import ONNX_ATTENTION, ORT_MHA
from vdeploy.graph_passes.rules.base import ops
from vdeploy.graph_passes.rules.erf import ERF_POLYNOMIAL_MAX_ABS_ERROR, ERF_TANH_MAX_ABS_ERROR
from vdeploy.graph_passes.rules.gelu import GELU_SIGMOID_MAX_ABS_ERROR, GELU_TANH_MAX_ABS_ERROR


@dataclass(frozen=True)
class Form:
    family: str  # a rule spec's name
    name: str
    hide: frozenset  # OpIds the family may not choose to emit
    max_abs_error: float | None = None  # documented, against the exact op; None: exact up to float rounding
    where: str = ""  # the document that states the error


_GELU, _ERF = "graph_passes/rules/gelu.py", "graph_passes/rules/erf.py"
FORMS: tuple[Form, ...] = (
    Form("gelu", "exact", frozenset()),
    Form("gelu", "tanh", ops("Gelu", "Erf"), GELU_TANH_MAX_ABS_ERROR, _GELU),
    Form("gelu", "sigmoid", ops("Gelu", "Erf", "Tanh"), GELU_SIGMOID_MAX_ABS_ERROR, _GELU),
    Form("erf", "exact", frozenset()),
    Form("erf", "polynomial", ops("Erf"), ERF_POLYNOMIAL_MAX_ABS_ERROR, _ERF),
    Form("erf", "tanh", ops("Erf", "Sign"), ERF_TANH_MAX_ABS_ERROR, _ERF),
    Form("erf", "sigmoid", ops("Erf", "Sign", "Tanh"), ERF_TANH_MAX_ABS_ERROR, _ERF),
    Form("softmax", "fused", frozenset()),
    Form("softmax", "decomposed", ops("Softmax")),
    Form("attention", "fused", frozenset()),
    Form("attention", "decomposed", frozenset({ORT_MHA, ONNX_ATTENTION})),
    Form("layer_norm", "fused", frozenset()),
    Form("layer_norm", "decomposed", ops("LayerNormalization")),
)
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(f.family for f in FORMS))


def default_form(family: str) -> str:
    return next(f.name for f in FORMS if f.family == family)


def form(family: str, name: str) -> Form:
    for candidate in FORMS:
        if candidate.family == family and candidate.name == name:
            return candidate
    known = ", ".join(f"{fam}={'|'.join(f.name for f in FORMS if f.family == fam)}" for fam in FAMILIES)
    raise UsageError(f"unknown form {family}={name}", f"forms: {known}")


@dataclass(frozen=True)
class FormSpec:
    """A rule spec that chooses its direction/tier without the hidden ops (the legalize() spec protocol)."""

    spec: Any
    hide: frozenset

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def approximations(self):
        return self.spec.approximations

    def choose(self, op_set: frozenset):
        return self.spec.choose(op_set - self.hide)


def with_forms(specs, forms: tuple[tuple[str, str], ...]) -> tuple:
    """`specs` (None: ALL_SPECS) with the named families wrapped in their forms."""
    from vdeploy.graph_passes.rules import ALL_SPECS

    chosen = {family: form(family, name) for family, name in forms}
    return tuple(
        FormSpec(spec, chosen[spec.name].hide) if spec.name in chosen and chosen[spec.name].hide else spec
        for spec in (ALL_SPECS if specs is None else specs)
    )


def documented_error(forms: tuple[tuple[str, str], ...]) -> dict[str, float]:
    """family -> documented max abs error of the approximating forms among `forms`."""
    out = {}
    for family, name in forms:
        f = form(family, name)
        if f.max_abs_error is not None:
            out[family] = f.max_abs_error
    return out
