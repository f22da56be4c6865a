"""The attention family: normalise every exporter shape to one internal op, then lower it for the target.

exported attention -> [attention_normalize] -> vdeploy.internal::Attention -> [attention] -> Attention | MHA | MatMul..

Two specs, run back to back (ALL_SPECS keeps them adjacent and first). One spec could not hold both phases: the
decomposition emits exactly the MatMul/Softmax/MatMul shape the normaliser captures, so a driver that re-runs a
family's rules until none fires would bounce between the two forever. Split, each phase reaches its fixpoint.

- ATTENTION_NORMALIZE: the normalisation rules (attention_normalize.py), minus a normaliser whose source op the
  target runs as it is (an opset-23 ONNX Attention stays when the target has Attention).
- ATTENTION: the fused lowerings the op set allows, best first, then the decomposition as the last resort; a fused
  lowering that declines a node (model opset below 23, head count unknown, ...) leaves it to the next, so nothing
  in ``vdeploy.internal`` survives. Semantics of the internal op: see attention_normalize.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from onnxscript.rewriter.pattern import RewriteRule

from vdeploy.graph_passes.ops import OpId
from vdeploy.graph_passes.rules.attention_lower import (
    attention_to_matmul_softmax,
    attention_to_onnx_attention,
    attention_to_ort_mha,
)
from vdeploy.graph_passes.rules.attention_normalize import ATTENTION_OP, CAPTURE_RULES
from vdeploy.graph_passes.rules.attention_onnx import attention_from_onnx_attention
from vdeploy.graph_passes.rules.base import INTERNAL_DOMAIN, NO_APPROXIMATIONS, Direction

INTERNAL_ATTENTION = OpId(INTERNAL_DOMAIN, ATTENTION_OP)
ONNX_ATTENTION = OpId("", "Attention")  # ONNX opset 23; used only when the model already imports opset >= 23
ORT_MHA = OpId("com.microsoft", "MultiHeadAttention")


@dataclass(frozen=True)
class AttentionNormalizeSpec:
    """Phase 1: every recognised attention subgraph -> vdeploy.internal::Attention."""

    name: str
    rules: tuple[RewriteRule, ...]  # always run
    unless_target_has: tuple[tuple[OpId, RewriteRule], ...]  # run only when the target lacks the op it rewrites
    approximations: Mapping[str, float] = field(default_factory=lambda: NO_APPROXIMATIONS)

    def choose(self, op_set: frozenset) -> tuple[Direction, tuple[RewriteRule, ...]]:
        """(fused, rules): the capture is a fusion into the internal op; the next spec always lowers it."""
        extra = tuple(rule for op, rule in self.unless_target_has if op not in op_set)
        return Direction.fused, (*self.rules, *extra)


@dataclass(frozen=True)
class AttentionLowerSpec:
    """Phase 2: vdeploy.internal::Attention -> the target's attention op, else MatMul/Softmax/MatMul."""

    name: str
    fused_lowerings: tuple[tuple[OpId, RewriteRule], ...]  # (op the rule emits, rule), best first
    decompose_rules: tuple[RewriteRule, ...]
    approximations: Mapping[str, float] = field(default_factory=lambda: NO_APPROXIMATIONS)

    def choose(self, op_set: frozenset) -> tuple[Direction, tuple[RewriteRule, ...]]:
        """(fused, usable lowerings + decomposition) or (decomposed, decomposition).

        'fused' is the plan; the per-rule counts say what each node became (a fused lowering may decline a node,
        e.g. attention_to_onnx_attention below opset 23, and the next rule takes it).
        """
        fused = tuple(rule for op, rule in self.fused_lowerings if op in op_set)
        return (Direction.fused if fused else Direction.decomposed), (*fused, *self.decompose_rules)


ATTENTION_NORMALIZE = AttentionNormalizeSpec(
    name="attention_normalize",
    rules=CAPTURE_RULES,
    unless_target_has=((ONNX_ATTENTION, attention_from_onnx_attention),),
)

ATTENTION = AttentionLowerSpec(
    name="attention",
    fused_lowerings=((ONNX_ATTENTION, attention_to_onnx_attention), (ORT_MHA, attention_to_ort_mha)),
    decompose_rules=(attention_to_matmul_softmax,),
)

ATTENTION_SPECS = (ATTENTION_NORMALIZE, ATTENTION)  # in this order, adjacent
