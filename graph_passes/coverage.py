"""Operator coverage: op counts before/after the graph passes and each op's status for a target.

(exported model, legalized model, op set, legalization counts) -> Coverage -> manifest `coverage` / CLI table
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field

from vdeploy.targets import OpId


class OpStatus(str, enum.Enum):
    native = "native"  # in the exported graph and in the target's op set
    fused = "fused"  # created by a fuse rule
    decomposed = "decomposed"  # created by a decompose rule, or removed because the target lacks it
    fallback = "fallback"  # outside the op set, but the target may run it on a fallback device
    unsupported = "unsupported"  # outside the op set and nowhere to run


def op_counts(model) -> dict[str, int]:
    """Counts per op id ('Op' or 'domain::Op') over the main graph of an onnx.ModelProto."""
    return dict(Counter(str(OpId.parse(f"{n.domain}::{n.op_type}")) for n in model.graph.node))


@dataclass(frozen=True)
class Coverage:
    ops_before: dict[str, int]
    ops_after: dict[str, int]
    fused: dict[str, int] = field(default_factory=dict)
    decomposed: dict[str, int] = field(default_factory=dict)
    rules: dict[str, int] = field(default_factory=dict)
    unsupported: tuple[str, ...] = ()
    fallback: tuple[str, ...] = ()
    rule_ops: dict[str, str] = field(default_factory=dict)  # op id -> "fused" | "decomposed" for rule-made ops

    def status(self, op: str) -> OpStatus:
        if op in self.unsupported:
            return OpStatus.unsupported
        if op in self.fallback:
            return OpStatus.fallback
        if op not in self.ops_after:
            return OpStatus.decomposed
        made_by = self.rule_ops.get(op)
        if made_by and op not in self.ops_before:
            return OpStatus(made_by)
        return OpStatus.native

    def table(self) -> list[dict]:
        ops = sorted(set(self.ops_before) | set(self.ops_after))
        return [{"op": op, "before": self.ops_before.get(op, 0), "after": self.ops_after.get(op, 0),
                 "status": self.status(op).value} for op in ops]

    def to_manifest(self) -> dict:
        return {"ops_before": self.ops_before, "ops_after": self.ops_after, "fused": self.fused,
                "decomposed": self.decomposed, "unsupported": list(self.unsupported), "rules": self.rules}


def check_op_set(model, op_set: frozenset, *, fallback: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(unsupported, fallback) op ids of a model for an op set."""
    outside = tuple(sorted(op for op in op_counts(model) if OpId.parse(op) not in op_set))
    return ((), outside) if fallback else (outside, ())
