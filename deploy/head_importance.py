"""Head importance, measured: the model output's change when one attention head is removed (ablation in ONNX Runtime).

onnx.ModelProto + samples -> with_head_masks (a [1, H, 1, 1] mask input per block) -> one ORT session -> run every
sample with all masks 1 (the baseline) and once per head with that head's mask 0 -> score = mean over samples of
1 - cosine(baseline output, ablated output) (all outputs flattened together; 0: the head changes nothing)
-> {block id: [score per head]}; heads_to_prune(scores, count) -> {block id: heads kept}, least important first.

Public:
  head_importance(model, samples, *, removed=None) -> Importance   scores per block and head, and how they were made
  heads_to_prune(scores, count, *, per_block=False, min_keep=1, blocks=None) -> {block id: heads kept}
  greedy_plan(model, samples, count, ...) -> (plan, [Importance])  re-measures after each removal (interactions)
Removing a head is exactly zeroing its output before the output projection, so the ablation measures the pruned graph.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

METRIC = "1 - cosine of the model outputs with the head removed vs with every head, mean over samples"


@dataclass(frozen=True)
class Importance:
    scores: dict[str, list[float]]  # block id -> one score per head (higher: the output needs the head more)
    samples: int
    metric: str = METRIC

    def to_dict(self) -> dict:
        return {
            "metric": self.metric,
            "samples": self.samples,
            "scores": {b: [round(s, 8) for s in v] for b, v in self.scores.items()},
        }


def head_importance(
    model, samples: Mapping[str, np.ndarray], *, removed: Mapping[str, Iterable[int]] | None = None, threads: int = 0
) -> Importance:
    """Score every head of every attention block by ablation on `samples` ({input: N samples}, matched to the
    graph's inputs in order; a sample is a[i] when it has the input's rank, else the batch-1 slice a[i:i+1]).
    `removed`: heads already taken out (masked in the baseline and scored 0)."""
    import onnxruntime as ort

    from vdeploy.graph_passes.head_prune import with_head_masks

    masked, masks = with_head_masks(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(masked.SerializeToString(), options, providers=["CPUExecutionProvider"])
    heads = {b: int(_input_shape(session, name)[1]) for b, name in masks.items()}
    base = {b: np.ones((1, h, 1, 1), np.float32) for b, h in heads.items()}
    for block, gone in (removed or {}).items():
        base[block][0, list(gone)] = 0.0
    data = [i for i in session.get_inputs() if i.name not in masks.values()]
    arrays = list(samples.values())
    count = len(arrays[0])
    feeds = [
        {spec.name: (a[i] if a.ndim == len(spec.shape) + 1 else a[i : i + 1]) for spec, a in zip(data, arrays)}
        for i in range(count)
    ]

    def outputs(mask: dict) -> list[np.ndarray]:
        named = {masks[b]: m for b, m in mask.items()}
        return [_flat(session.run(None, {**feed, **named})) for feed in feeds]

    reference = outputs(base)
    scores: dict[str, list[float]] = {}
    for block, h in heads.items():
        scores[block] = []
        for head in range(h):
            if base[block][0, head, 0, 0] == 0.0:
                scores[block].append(0.0)
                continue
            mask = {**base, block: base[block].copy()}
            mask[block][0, head] = 0.0
            ablated = outputs(mask)
            scores[block].append(float(np.mean([1.0 - _cosine(r, a) for r, a in zip(reference, ablated)])))
    return Importance(scores, count)


def heads_to_prune(
    scores: Mapping[str, list[float]],
    count: int,
    *,
    per_block: bool = False,
    min_keep: int = 1,
    blocks: Iterable[str] | None = None,
) -> dict[str, list[int]]:
    """{block id: heads kept} removing the `count` least important heads overall (per_block: in every block), never
    leaving a block fewer than `min_keep` heads; only the `blocks` named (default: all) lose heads."""
    allowed = set(scores if blocks is None else blocks)
    removed: dict[str, set[int]] = {b: set() for b in scores}
    if per_block:
        for block in allowed:
            order = sorted(range(len(scores[block])), key=lambda h: (scores[block][h], h))
            removed[block] = set(order[: max(0, min(count, len(order) - min_keep))])
    else:
        ranked = sorted((s, b, h) for b in allowed for h, s in enumerate(scores[b]))
        for _, block, head in ranked:
            if sum(map(len, removed.values())) >= count:
                break
            if len(scores[block]) - len(removed[block]) > min_keep:
                removed[block].add(head)
    return {b: [h for h in range(len(v)) if h not in removed[b]] for b, v in scores.items()}


def greedy_plan(
    model,
    samples: Mapping[str, np.ndarray],
    count: int,
    *,
    min_keep: int = 1,
    blocks: Iterable[str] | None = None,
) -> tuple[dict[str, list[int]], list[Importance]]:
    """Remove `count` heads one at a time, re-measuring every remaining head after each removal (heads interact:
    one head's removal can make another matter more). count + 1 ablation rounds: slower, better for large counts."""
    rounds: list[Importance] = []
    removed: dict[str, set[int]] = {}
    allowed = None if blocks is None else set(blocks)
    for _ in range(count):
        importance = head_importance(model, samples, removed=removed)
        rounds.append(importance)
        live = [
            (s, b, h)
            for b, v in importance.scores.items()
            for h, s in enumerate(v)
            if (allowed is None or b in allowed)
            and h not in removed.get(b, set())
            and len(v) - len(removed.get(b, set())) > min_keep
        ]
        if not live:
            break
        _, block, head = min(live)
        removed.setdefault(block, set()).add(head)
    scores = rounds[0].scores if rounds else {}
    return {b: [h for h in range(len(v)) if h not in removed.get(b, set())] for b, v in scores.items()}, rounds


def _input_shape(session, name: str) -> list:
    return next(i.shape for i in session.get_inputs() if i.name == name)


def _flat(outputs: list) -> np.ndarray:
    return np.concatenate([np.asarray(o, dtype=np.float64).reshape(-1) for o in outputs])


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    denominator = float(np.linalg.norm(a) * np.linalg.norm(b))
    return 1.0 if denominator == 0.0 else float(np.dot(a, b) / denominator)
