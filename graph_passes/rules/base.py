"""The rule-spec contract: one op family, both directions.

Legalization picks ``fuse_rules`` when the target's op set has ``big_op``, else ``decompose_rules``.
Each rule is an onnxscript ``RewriteRule`` with a ``name``; legalization stamps that name on every node the
rule creates (node metadata key ``RULE_KEY``) and counts matches per rule for the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnxscript.rewriter.pattern import RewriteRule

from vdeploy.targets import OpId

RULE_KEY = "vdeploy.rule"
INTERNAL_DOMAIN = "vdeploy.internal"  # private ops; none may survive legalization


@dataclass(frozen=True)
class RuleSpec:
    """One op family: the fused op, the rules that form it, the rules that take it apart."""

    name: str  # family, e.g. "layer_norm"
    big_op: OpId  # e.g. OpId("", "LayerNormalization")
    fuse_rules: tuple[RewriteRule, ...]
    decompose_rules: tuple[RewriteRule, ...]

    def choose(self, op_set: frozenset) -> tuple[str, tuple[RewriteRule, ...]]:
        """('fused', fuse_rules) when the target has big_op, else ('decomposed', decompose_rules)."""
        if self.big_op in op_set:
            return "fused", self.fuse_rules
        return "decomposed", self.decompose_rules
