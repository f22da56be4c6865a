"""Op identities and op sets: the vocabulary legalization, coverage and the target catalogue share.

'Op' / 'domain::Op' text -> OpId(domain, op_type); a target's op profile -> OpSet (frozenset[OpId])
"""

from __future__ import annotations

from typing import NamedTuple


class OpId(NamedTuple):
    domain: str
    op_type: str

    @classmethod
    def parse(cls, text: str) -> OpId:
        """'LayerNormalization' -> ('', ...); 'com.microsoft::Gelu' -> ('com.microsoft', 'Gelu')."""
        domain, _, op_type = text.rpartition("::")
        domain = "" if domain in ("", "ai.onnx") else domain
        return cls(domain, op_type)

    def __str__(self) -> str:
        return f"{self.domain}::{self.op_type}" if self.domain else self.op_type


OpSet = frozenset  # frozenset[OpId]

CAPABILITY_DOMAIN = "vdeploy.capability"  # pseudo-ops: capabilities a profile declares, never nodes in a graph
MATMUL_RANK4 = OpId(CAPABILITY_DOMAIN, "MatMulRank4")
