"""Legalization: rewrite a model, op family by op family, until its ops fit a target's op set; then prove it.

model + op set -> usable ops (the op set minus ops newer than the model's opset) -> for each spec in ALL_SPECS:
choose(usable) -> run the chosen rules to a fixpoint, stamping RULE_KEY on every node a rule creates -> drop dead
nodes (and Identity nodes / Constant nodes, lifted to initializers, when the target lacks those ops)
-> LegalizeResult: per-family and per-rule counts, and the op ids still outside the set (allowed only as fallback).

Cost: each rule application is one walk of the graph, and the number of applications is bounded by the rules
chosen x MAX_ROUNDS, so a pass is linear in the number of nodes.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import onnx.defs
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.rewriter.pattern import RewriteRule, RewriteRuleSet

from vdeploy.errors import UnsupportedOpsError
from vdeploy.graph_passes.ops import MATMUL_RANK4, OpId
from vdeploy.graph_passes.rules import ALL_SPECS
from vdeploy.graph_passes.rules.base import INTERNAL_DOMAIN, RULE_KEY, Direction

logger = logging.getLogger(__name__)

MAX_ROUNDS = 8  # a family's rules are re-run until nothing fires; more rounds than this means rules that ping-pong


@dataclass(frozen=True)
class LegalizeResult:
    """What legalization did (counts for the manifest) and what is left outside the op set."""

    model: ir.Model
    fused: Mapping[str, int]  # family -> nodes rewritten into the target's big op
    decomposed: Mapping[str, int]  # family -> nodes rewritten into smaller ops
    rules: Mapping[str, int]  # rule name -> matches rewritten
    unsupported: tuple[str, ...]  # op ids (str(OpId)) left outside the usable op set, sorted
    fallback: bool  # may the unsupported ops run on the target's fallback device (e.g. its CPU)?
    choices: Mapping[str, Direction]  # family -> the direction chosen for this op set
    rule_directions: Mapping[str, Direction]  # rule that fired -> its family's direction (for coverage_of)
    approximations: Mapping[str, float]  # rule that fired -> its documented max abs error

    @property
    def legal(self) -> bool:
        """True when nothing is left outside the op set, or everything left may fall back."""
        return self.fallback or not self.unsupported


def all_nodes(model: ir.Model) -> Iterator[ir.Node]:
    """Every node, subgraphs (If/Loop bodies) included."""
    return ir.traversal.RecursiveGraphIterator(model.graph)


def op_census(model: ir.Model) -> Counter:
    """OpId -> number of nodes."""
    return Counter(OpId(n.domain if n.domain != "ai.onnx" else "", n.op_type) for n in all_nodes(model))


def usable_ops(op_set: Iterable[OpId], opset_imports: Mapping[str, int]) -> frozenset:
    """The ops of `op_set` a model at these opset imports may use.

    An op onnx.defs knows only from a newer version of its domain than the model imports (Gelu: default domain 20)
    is left out; the model's opset is never bumped here. Ops of domains onnx.defs does not know (com.microsoft) are
    kept: their schemas live with the runtime that lists them.
    """
    usable = set()
    for op in op_set:
        version = opset_imports.get(op.domain) or (opset_imports.get("ai.onnx") if op.domain == "" else None)
        if not onnx.defs.has(op.op_type, op.domain):
            usable.add(op)  # unknown to onnx.defs: trust the profile
        elif version is not None and onnx.defs.has(op.op_type, version, op.domain):
            usable.add(op)
        elif version is None and op.domain != "":
            usable.add(op)  # a standard side domain (ai.onnx.ml) the model does not import yet
    return frozenset(usable)


RANK4_MATMUL_NOTE = "MatMul with rank >= 4 inputs needs vdeploy.capability::MatMulRank4, which the target lacks"


def _rank4_matmul(model: ir.Model) -> bool:
    """A MatMul with an input of known rank >= 4 is in the model (the rules keep shapes on the values they make)."""
    for node in all_nodes(model):
        if node.op_type == "MatMul" and node.domain in ("", "ai.onnx"):
            ranks = [None if v is None or v.shape is None else v.shape.rank() for v in node.inputs]
            if any(r is not None and r >= 4 for r in ranks):
                return True
    return False


def unsupported_ops(model: ir.Model, usable: frozenset) -> tuple[str, ...]:
    """Sorted op ids present in the model and outside `usable` (internal-domain ops always count). MatMul counts
    when the target lacks the rank-4 capability and a MatMul of rank >= 4 remains."""
    left = {str(op) for op in op_census(model) if op not in usable or op.domain == INTERNAL_DOMAIN}
    if MATMUL_RANK4 not in usable and OpId("", "MatMul") in usable and _rank4_matmul(model):
        left.add("MatMul")
    return tuple(sorted(left))


def check_legal(model: ir.Model, usable: frozenset, fallback: bool) -> None:
    """The post-condition: raise UnsupportedOpsError if an internal op survives, or (without fallback) any op
    outside the usable set remains."""
    left = unsupported_ops(model, usable)
    internal = [op for op in left if op.startswith(INTERNAL_DOMAIN + "::")]
    if internal:
        raise UnsupportedOpsError(
            f"internal ops survived legalization: {', '.join(internal)}",
            "a lowering rule is missing for them; this is a vdeploy bug, please report it",
        )
    if left and not fallback:
        note = f" ({RANK4_MATMUL_NOTE})" if "MatMul" in left and OpId("", "MatMul") in usable else ""
        raise UnsupportedOpsError(
            f"ops outside the target's op set remain after legalization: {', '.join(left)}{note}",
            "choose a target that allows CPU fallback, or one whose op set has these ops",
        )


def _apply(model: ir.Model, name: str, variants: Sequence[RewriteRule]) -> int:
    """Run the variants of one rule (one name) over the model in one walk; stamp the name on the nodes they
    created (the nodes that were not there before). Returns the match count."""
    before = set(all_nodes(model))
    count = RewriteRuleSet(list(variants)).apply_to_model(model)
    if count:
        for node in all_nodes(model):
            if node not in before:
                node.metadata_props[RULE_KEY] = name
    return count


def _root_op(rule: RewriteRule) -> tuple[str, str] | None:
    """(domain, op_type) of the node a rule's pattern is rooted at, to skip rules with nothing to match."""
    try:
        node = rule._target_pattern.output_nodes[0]  # onnxscript 0.7.2 internals; None disables the shortcut
        domain, op_type, _ = node.op_identifier()
        return domain, op_type
    except (AttributeError, IndexError, TypeError, ValueError):
        return None


def _by_name(rules: Sequence[RewriteRule]) -> list[tuple[str, tuple[RewriteRule, ...], frozenset | None]]:
    """Consecutive rules sharing a name (one rule's pattern variants) as (name, variants, root ops | None)."""
    groups = []
    for name, grouped in itertools.groupby(rules, key=lambda rule: rule.name):
        variants = tuple(grouped)
        roots = [_root_op(rule) for rule in variants]
        groups.append((name, variants, None if None in roots else frozenset(roots)))
    return groups


def _present_ops(model: ir.Model) -> set[tuple[str, str]]:
    return {(n.domain, n.op_type) for n in all_nodes(model)}


def run_to_fixpoint(model: ir.Model, rules: Sequence[RewriteRule], counts: Counter) -> int:
    """Apply each rule in turn, round after round, until a round rewrites nothing (at most MAX_ROUNDS rounds).
    Consecutive rules sharing a name are one rule's pattern variants: they run in one walk (at each node the first
    variant that matches wins). A rule whose pattern root op is absent from the graph is skipped without a walk."""
    total = 0
    groups = _by_name(rules)
    for _ in range(MAX_ROUNDS):
        fired = 0
        present = _present_ops(model)
        for name, variants, roots in groups:
            if roots is not None and roots.isdisjoint(present):
                continue
            n = _apply(model, name, variants)
            counts[name] += n
            fired += n
            if n:
                present = _present_ops(model)
        total += fired
        if not fired:
            return total
    logger.warning("legalization rules still rewriting after %d rounds: %s", MAX_ROUNDS, [r.name for r in rules])
    return total


def legalize(
    model: ir.Model,
    op_set: frozenset,
    *,
    fallback: bool = False,
    specs: Sequence | None = None,
    after_spec: Callable[[str, ir.Model, dict[str, int]], None] | None = None,
) -> LegalizeResult:
    """Rewrite `model` in place so that its ops fit `op_set`; report counts and leftovers (never raises for them:
    the Legalize pass's ensures() does). `after_spec(family, model, fired)` is called after each rule family
    (a numerics instrument checks the graph there; `fired`: that family's rule -> rewrites)."""
    specs = ALL_SPECS if specs is None else specs
    common_passes.ShapeInferencePass(strict_mode=False)(model)  # rules read dtypes/shapes; failure leaves model as is
    usable = usable_ops(op_set, model.opset_imports)
    fused: Counter = Counter()
    decomposed: Counter = Counter()
    rules: Counter = Counter()
    choices: dict[str, Direction] = {}
    rule_directions: dict[str, Direction] = {}
    approximations: dict[str, float] = {}
    for spec in specs:
        direction, chosen = spec.choose(usable)
        choices[spec.name] = Direction(direction) if chosen else Direction.kept
        before = Counter(rules)
        n = run_to_fixpoint(model, chosen, rules)
        if after_spec is not None:
            after_spec(spec.name, model, {r: c - before[r] for r, c in rules.items() if c > before[r]})
        if n:
            (fused if direction == Direction.fused else decomposed)[spec.name] += n
        rule_directions.update({rule.name: Direction(direction) for rule in chosen if rules[rule.name]})
        for name, error in spec.approximations.items():
            if rules[name]:
                approximations[name] = error
    common_passes.RemoveUnusedNodesPass()(model)
    if OpId("", "Identity") not in usable:
        common_passes.IdentityEliminationPass()(model)
    if OpId("", "Constant") not in usable:
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
    left = unsupported_ops(model, usable)
    return LegalizeResult(
        model=model,
        fused=dict(fused),
        decomposed=dict(decomposed),
        rules={name: n for name, n in rules.items() if n},
        unsupported=left,
        fallback=fallback,
        choices=choices,
        rule_directions=rule_directions,
        approximations=approximations,
    )


class Legalize(ir.passes.InPlacePass):
    """The legalization pass. `result` holds the last LegalizeResult; ensures() checks the post-condition."""

    def __init__(self, op_set: frozenset, fallback: bool = False):
        super().__init__()
        self.op_set = frozenset(op_set)
        self.fallback = fallback
        self.result: LegalizeResult | None = None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.result = legalize(model, self.op_set, fallback=self.fallback)
        return ir.passes.PassResult(model, modified=bool(self.result.rules))

    def ensures(self, model: ir.Model) -> None:
        check_legal(model, usable_ops(self.op_set, model.opset_imports), self.fallback)
