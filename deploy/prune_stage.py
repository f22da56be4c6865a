"""The plan's prune stage: attention heads removed from the canonical graph, before legalization sees it.

BuildRequest.prune_heads (HeadPruning: a keep plan {block id: heads kept}, or a count of heads chosen by importance
measured on the validation samples) -> the unpruned canonical graph (shared.exports) -> [head_importance, cached per
opset in Shared] -> graph_passes.head_prune.prune_heads -> state.canonical = the pruned graph, state.pruning = record.
Without a request the stage puts the unpruned graph back, so resume_from(state, "prune", changes={"request": ...})
can try another pruning choice, or none, and re-run only the tail (legalize -> ... -> judge).
Numerics and top-1 stay judged against the UNPRUNED model's reference: the accuracy cost of pruning is what the
build reports, and a gate it breaks fails the build (exit 3), saying pruning is why.

Public: HeadPruning (the request, JSON in/out), Pruning (the manifest record), prune (the stage), describe_prune.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vdeploy.errors import UsageError
from vdeploy.plan import BuildState

JUDGED_AGAINST = "the unpruned model's reference outputs: numerics, top-1 and gates include the cost of pruning"


@dataclass(frozen=True)
class HeadPruning:
    """What to prune: `keep` (block id -> heads kept, e.g. a previous build's manifest `pruning.plan`), or `count`
    heads, least important first by measured ablation (`per_block`: that many in every block; `greedy`: re-measure
    after each removal). JSON: {"keep": {"attn0": [0, 2]}} or {"count": 3, "per_block": false, "greedy": false}."""

    keep: tuple[tuple[str, tuple[int, ...]], ...] = ()
    count: int = 0
    per_block: bool = False
    greedy: bool = False

    @classmethod
    def of(cls, value: Any) -> HeadPruning:
        """From an int or digits (count), a keep plan {block: heads}, the JSON form, a JSON file path, a HeadPruning."""
        if isinstance(value, HeadPruning):
            return value
        if isinstance(value, bool) or value is None:
            raise UsageError(f"prune_heads={value!r} is not a pruning plan", "pass a count or {block id: heads kept}")
        if isinstance(value, str) and value.strip().isdigit():  # a CLI value: "3" is a count, else a JSON file
            value = int(value)
        if isinstance(value, int):
            if value < 1:
                raise UsageError(f"prune_heads={value} removes nothing", "pass a count >= 1")
            return cls(count=value)
        if isinstance(value, (str, Path)):
            try:
                value = json.loads(Path(value).read_text())
            except (OSError, ValueError) as exc:
                raise UsageError(f"cannot read the pruning plan {value}: {exc}", "pass a JSON file") from None
        if not isinstance(value, Mapping):
            raise UsageError(f"prune_heads of type {type(value).__name__}", "pass a count or {block id: heads kept}")
        if set(value) <= {"keep", "count", "per_block", "greedy"} and value:
            keep = value.get("keep") or {}
            pruning = cls(
                _keep_tuple(keep), int(value.get("count", 0)), bool(value.get("per_block")), bool(value.get("greedy"))
            )
        else:
            pruning = cls(keep=_keep_tuple(value))
        if not pruning.keep and pruning.count < 1:
            raise UsageError("the pruning plan removes nothing", "give a keep plan or a count >= 1")
        return pruning

    def to_json(self) -> dict:
        if self.keep:
            return {"keep": {block: list(heads) for block, heads in self.keep}}
        return {"count": self.count, "per_block": self.per_block, "greedy": self.greedy}


def _keep_tuple(keep: Mapping) -> tuple[tuple[str, tuple[int, ...]], ...]:
    try:
        return tuple(sorted((str(b), tuple(int(h) for h in heads)) for b, heads in keep.items()))
    except (TypeError, ValueError, AttributeError):
        raise UsageError("a keep plan maps block ids to lists of head indices", 'e.g. {"attn0": [0, 2]}') from None


@dataclass(frozen=True)
class Pruning:
    """What the prune stage did, for the manifest."""

    request: HeadPruning
    result: Any  # graph_passes.head_prune.PruneResult
    importance: Any = None  # head_importance.Importance, when measured
    importance_inputs: str | None = None
    flops: tuple[int, int] | None = None  # (unpruned, pruned) counted from the graphs (validate/estimate.count_cost)

    def to_manifest(self) -> dict:
        result = self.result
        scores = self.importance.scores if self.importance else {}
        total = sum(b.heads for b in result.blocks)
        record = {
            "request": self.request.to_json(),
            "plan": {"keep": result.plan()},  # replays: prune_heads=<this dict> rebuilds the same graph
            "heads_total": total,
            "heads_removed": result.heads_removed,
            "blocks": [
                {**b.to_dict(), **({"importance": _rounded(scores[b.id])} if b.id in scores else {})}
                for b in result.pruned
            ],
            "refused": dict(result.refused),
            "params_removed": result.params_removed,
            "flops_removed": result.flops_removed,
            "importance": None
            if self.importance is None
            else {**self.importance.to_dict(), "inputs": self.importance_inputs},
            "judged_against": JUDGED_AGAINST,
        }
        if self.flops:
            before, after = self.flops
            record["flops_counted"] = {"unpruned": before, "pruned": after, "removed_pct": _pct(before - after, before)}
        return record

    def summary(self) -> str:
        result = self.result
        total = sum(b.heads for b in result.blocks)
        line = (
            f"pruned {result.heads_removed} of {total} attention heads in {len(result.pruned)} block(s): "
            f"{result.params_removed:,} parameters, {result.flops_removed / 1e6:.1f} MFLOP per inference removed"
        )
        if result.refused:
            line += f"; left unpruned: {', '.join(f'{b} ({why})' for b, why in result.refused.items())}"
        return line


def _rounded(values) -> list[float]:
    return [round(float(v), 8) for v in values]


def _pct(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 2) if whole else None


def describe_prune(state: BuildState) -> str | None:
    request = state.request.prune_heads
    if request is None:
        return None
    if request.keep:
        return f"pruning attention heads (plan for {len(request.keep)} block(s))"
    how = "per block" if request.per_block else "in all"
    return f"pruning {request.count} attention head(s) {how}, least important first (measured by ablation)"


def prune(state: BuildState) -> None:
    """The stage: state.canonical <- the pruned graph (or the unpruned one without a request)."""
    _, unpruned = state.shared.exports[state.target.spec.opset]
    state.canonical, state.pruning = unpruned, None
    request = state.request.prune_heads
    if request is None:
        return
    from vdeploy.graph_passes.head_prune import attention_blocks, prune_heads
    from vdeploy.validate.estimate import count_cost

    model, importance = unpruned.model, None
    if request.keep:
        keep = dict(request.keep)
    else:
        prunable = [b.id for b in attention_blocks(model) if b.refused is None]
        if not prunable:
            raise UsageError(
                "prune_heads: the model has no attention block whose heads vdeploy can remove",
                "run vdeploy.graph_passes.head_prune.attention_blocks(model) to see the blocks and the reasons",
            )
        keep, importance = _choose(state, model, request, prunable)
    result = prune_heads(model, keep)
    state.canonical = dataclasses.replace(unpruned, model=result.model)
    flops = (count_cost(model).flops, count_cost(result.model).flops)
    state.pruning = Pruning(request, result, importance, state.shared.samples_source, flops)
    state.progress(state.pruning.summary())


def _choose(state: BuildState, model, request: HeadPruning, prunable: list[str]):
    from vdeploy.head_importance import greedy_plan, head_importance, heads_to_prune

    samples = state.shared.samples
    if request.greedy:
        keep, rounds = greedy_plan(model, samples, request.count, blocks=prunable)
        return keep, rounds[0] if rounds else None
    key = state.target.spec.opset  # the same graph and samples for every target at this opset
    if key not in state.shared.head_importance:
        state.shared.head_importance[key] = head_importance(model, samples)
    importance = state.shared.head_importance[key]
    keep = heads_to_prune(importance.scores, request.count, per_block=request.per_block, blocks=prunable)
    return keep, importance
