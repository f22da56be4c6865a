"""Operator coverage: op counts before/after legalization and how the target runs each op.

(graph legalization received, legal graph, LegalizeResult, op set) -> Coverage -> manifest `coverage` / CLI table
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field

from vdeploy.graph_passes.ops import OpId


class OpStatus(str, enum.Enum):
    native = "native"  # in the graph as exported and in the target's op set
    fused = "fused"  # made by a fuse rule, or absorbed into a fused op
    decomposed = "decomposed"  # made by a decompose rule, or taken apart because the target lacks it
    fallback = "fallback"  # outside the op set, but the target may run it on a fallback device
    unsupported = "unsupported"  # outside the op set and nowhere to run
    unknown = "unknown"  # outside the op set, and the target's sources neither list nor exclude it


def op_counts(model) -> dict[str, int]:
    """Counts per op id ('Op' or 'domain::Op') over the main graph of an onnx.ModelProto."""
    return dict(Counter(str(OpId.parse(f"{n.domain}::{n.op_type}")) for n in model.graph.node))


@dataclass(frozen=True)
class Coverage:
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    status: dict[str, OpStatus]
    fused: dict[str, int] = field(default_factory=dict)  # family -> rewrites
    decomposed: dict[str, int] = field(default_factory=dict)
    rules: dict[str, int] = field(default_factory=dict)  # rule name -> rewrites
    approximations: dict[str, float] = field(default_factory=dict)  # approximating rule -> documented max error

    @property
    def unsupported(self) -> tuple[str, ...]:
        return tuple(op for op, s in self.status.items() if s is OpStatus.unsupported)

    @property
    def unknown(self) -> tuple[str, ...]:
        return tuple(op for op, s in self.status.items() if s is OpStatus.unknown)

    @property
    def fallback(self) -> tuple[str, ...]:
        return tuple(op for op, s in self.status.items() if s is OpStatus.fallback)

    def table(self) -> list[dict]:
        return [
            {"op": op, "before": self.ops_before.get(op, 0), "after": self.ops_after.get(op, 0), "status": status.value}
            for op, status in self.status.items()
        ]

    def to_manifest(self) -> dict:
        return {
            "ops_before": self.ops_before,
            "ops_after": self.ops_after,
            "fused": self.fused,
            "decomposed": self.decomposed,
            "unsupported": list(self.unsupported),
            "rules": self.rules,
            "fallback": list(self.fallback),
            "unknown": list(self.unknown),
            "approximations": self.approximations,
            "status": {op: s.value for op, s in self.status.items()},
        }


def coverage_of(before, after, result, op_set: frozenset, unknown: frozenset = frozenset()) -> Coverage:
    """Coverage from the graph legalization received, the legal graph (both onnx.ModelProto), its LegalizeResult,
    the target's op set and the ops its sources leave open (`unknown`: status unknown instead of unsupported)."""
    from vdeploy.graph_passes.rules.base import RULE_KEY

    made_by: dict[str, str] = {}
    for node in after.graph.node:
        rule = next((p.value for p in node.metadata_props if p.key == RULE_KEY), None)
        if rule in result.rule_directions:
            made_by[str(OpId.parse(f"{node.domain}::{node.op_type}"))] = result.rule_directions[rule].value
    ops_before, ops_after = op_counts(before), op_counts(after)
    status = {}
    for op in sorted(set(ops_before) | set(ops_after)):
        if op in result.unsupported and OpId.parse(op) in unknown:
            status[op] = OpStatus.unknown
        elif op in result.unsupported:
            status[op] = OpStatus.fallback if result.fallback else OpStatus.unsupported
        elif op not in ops_after:
            status[op] = OpStatus.fused if OpId.parse(op) in op_set else OpStatus.decomposed
        elif op not in ops_before and op in made_by:
            status[op] = OpStatus(made_by[op])
        else:
            status[op] = OpStatus.native
    return Coverage(
        ops_before,
        ops_after,
        status,
        dict(result.fused),
        dict(result.decomposed),
        dict(result.rules),
        dict(result.approximations),
    )
