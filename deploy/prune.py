"""Head pruning for a PyTorch module, to fine-tune in your own loop: the graph pass's plan applied as masks.

nn.Module + example inputs -> plan_for: export, canonicalize, measure head importance (ablation in ONNX Runtime),
choose `count` heads -> HeadPlan {block id: heads kept} -> mask_heads(module, plan): a forward pre-hook on each
attention's output projection zeroes the removed heads' channels (exactly what removing them does) -> your training
loop fine-tunes the rest -> vdeploy.build(module, ..., prune_heads=plan.keep) removes the masked heads from the graph
(the build's reference is the masked module itself, so the build judges the fine-tuned model).

Attention modules are found by their parts: an output projection `proj` (nn.Linear), a head count (`num_heads` or
`heads`), and `qkv` or `q`/`k`/`v` Linears (timm's Attention / WindowAttention, the golden ViT and Swin). Block ids
attn0, attn1, ... follow execution order, which is the graph's topological order for sequential transformers;
plan_for checks the match (block count and heads per block) against the exported graph.

Public: plan_for(model, example_inputs, samples, count, ...) -> HeadPlan · mask_heads(model, keep) -> HeadMasks
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vdeploy.errors import UsageError

HEAD_COUNT_ATTRS = ("num_heads", "heads")


@dataclass(frozen=True)
class HeadPlan:
    keep: dict[str, list[int]]  # block id -> heads kept (every block); pass as prune_heads= to vdeploy.build
    importance: Any  # vdeploy.head_importance.Importance the choice was made from
    heads: dict[str, int]  # block id -> heads before pruning

    @property
    def removed(self) -> dict[str, list[int]]:
        return {b: [h for h in range(n) if h not in self.keep[b]] for b, n in self.heads.items()}


@dataclass
class HeadMasks:
    """The hooks mask_heads installed; remove() restores the module's original behaviour."""

    modules: dict  # block id -> attention module
    handles: list

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def attention_modules(model, example_inputs: Sequence) -> list:
    """The model's attention modules in execution order (each one's first call on `example_inputs`)."""
    import torch

    candidates = [m for m in model.modules() if _is_attention(m)]
    order: list = []

    def seen(module, _inputs) -> None:
        if module not in order:
            order.append(module)

    hooks = [m.register_forward_pre_hook(seen) for m in candidates]
    try:
        with torch.no_grad():
            model(*example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return order


def mask_heads(model, keep: Mapping[str, Sequence[int]], example_inputs: Sequence | None = None) -> HeadMasks:
    """Zero the removed heads' channels at every named block's output projection input (a forward pre-hook), in
    place. Without `example_inputs` blocks are numbered in module order (model.modules()), else in execution order."""
    import torch

    modules = (
        attention_modules(model, example_inputs)
        if example_inputs is not None
        else [m for m in model.modules() if _is_attention(m)]
    )
    by_id = {f"attn{i}": m for i, m in enumerate(modules)}
    handles = []
    for block, kept in keep.items():
        if block not in by_id:
            raise UsageError(f"no attention module for block {block!r}", f"the model has {len(by_id)} blocks")
        module = by_id[block]
        heads = _heads(module)
        if not kept or any(not 0 <= h < heads for h in kept):
            raise UsageError(f"block {block}: heads to keep must be indices in 0..{heads - 1}", f"got {list(kept)}")
        width = module.proj.in_features // heads
        mask = torch.zeros(module.proj.in_features)
        for head in kept:
            mask[head * width : (head + 1) * width] = 1.0
        if bool(mask.all()):
            continue
        handles.append(module.proj.register_forward_pre_hook(_masking(mask)))
    return HeadMasks(by_id, handles)


def _masking(mask):
    def hook(_module, inputs):
        return (inputs[0] * mask.to(inputs[0].dtype),)

    return hook


def plan_for(
    model,
    example_inputs: Sequence,
    samples: Sequence | Any,
    count: int,
    *,
    per_block: bool = False,
    greedy: bool = False,
) -> HeadPlan:
    """Choose `count` heads to remove (per_block: in every block) by importance measured on `samples` (a tensor or
    array [N, *input shape], the model's single input) with the exported graph; checks the module/graph match."""
    import numpy as np
    import torch

    from vdeploy.export import export_onnx
    from vdeploy.graph_passes.canonicalize import canonicalize
    from vdeploy.graph_passes.head_prune import attention_blocks
    from vdeploy.head_importance import greedy_plan, head_importance, heads_to_prune
    from vdeploy.sources import load_object

    loaded = load_object(model, tuple(example_inputs), name=type(model).__name__.lower())
    graph = canonicalize(export_onnx(loaded, tuple(example_inputs), 18).model).model
    blocks = attention_blocks(graph)
    modules = attention_modules(model, example_inputs)
    heads = {b.id: b.heads for b in blocks}
    module_heads = [_heads(m) for m in modules]
    if list(heads.values()) != module_heads:
        raise UsageError(
            f"the graph's attention blocks (heads {list(heads.values())}) do not match the module's {module_heads}",
            "mask_heads pairs blocks with attention modules by execution order; prune in the graph instead "
            "(vdeploy.build(..., prune_heads=N))",
        )
    data = samples.numpy() if isinstance(samples, torch.Tensor) else np.asarray(samples)
    feeds = {"input": data.astype(np.float32)}
    prunable = [b.id for b in blocks if b.refused is None]
    if greedy:
        keep, rounds = greedy_plan(graph, feeds, count, blocks=prunable)
        return HeadPlan(keep, rounds[0] if rounds else None, heads)
    importance = head_importance(graph, feeds)
    keep = heads_to_prune(importance.scores, count, per_block=per_block, blocks=prunable)
    return HeadPlan(keep, importance, heads)


def _is_attention(module) -> bool:
    from torch import nn

    proj = getattr(module, "proj", None)
    has_qkv = isinstance(getattr(module, "qkv", None), nn.Linear) or all(
        isinstance(getattr(module, n, None), nn.Linear) for n in ("q", "k", "v")
    )
    return isinstance(proj, nn.Linear) and has_qkv and _heads(module, None) is not None


def _heads(module, default: Any = 0) -> Any:
    for name in HEAD_COUNT_ATTRS:
        value = getattr(module, name, None)
        if isinstance(value, int):
            return value
    return default
