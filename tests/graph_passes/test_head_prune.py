"""Head pruning at graph level: removing head h equals the PyTorch model with head h's contribution zeroed.

golden vit/swin and timm deit_tiny (dynamo opset 18 and legacy opset 17 exports), plus attention written with
separate q/k/v projections, a channel Split and channel Slices -> prune_heads(random plan) -> ONNX Runtime output
vs masked_reference (tests/pruning_helpers.py) within 1e-5 relative; pruning nothing returns the model untouched;
a block whose projection output is read elsewhere is refused with a reason and left as it is.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from tests.models import GOLDEN
from tests.pruning_helpers import EXACT_REL, exported, masked_reference, rel_err, run, variant_net
from vdeploy.errors import UsageError
from vdeploy.graph_passes.head_prune import attention_blocks, prune_heads, with_head_masks
from vdeploy.timm_compat import import_timm


def random_plan(blocks, seed: int) -> dict[str, list[int]]:
    """Every block loses at least one head, keeps at least one."""
    rng = np.random.default_rng(seed)
    return {
        b.id: sorted(rng.choice(b.heads, size=int(rng.integers(1, b.heads)), replace=False).tolist()) for b in blocks
    }


def check_pruned(module, model, x, seed: int = 0):
    blocks = attention_blocks(model)
    assert blocks and all(b.refused is None for b in blocks), blocks
    plan = random_plan(blocks, seed)
    result = prune_heads(model, plan)
    onnx.checker.check_model(result.model, full_check=True)
    assert not result.refused and result.plan() == plan
    assert result.heads_removed == sum(b.heads - len(plan[b.id]) for b in blocks) > 0
    got, ref = run(result.model, x), masked_reference(module, plan, x)
    assert rel_err(got, ref) <= EXACT_REL
    assert rel_err(run(model, x), ref) > 100 * EXACT_REL  # the removed heads mattered: the test can fail
    return result


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
@pytest.mark.parametrize("name", ["vit", "swin"])
def test_golden_pruned_heads_equal_the_masked_module(name, exporter):
    build_fn, shape = GOLDEN[name]
    module = build_fn(seed=0)
    model = exported(module, shape, exporter)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    assert prune_heads(model, {}).model is model  # nothing to remove: the graph as it came, bit for bit
    full = {b.id: list(range(b.heads)) for b in attention_blocks(model)}
    assert prune_heads(model, full).model is model
    result = check_pruned(module, model, x)
    if name == "swin":  # the relative position bias [1, H, N, N] (and the shift mask sum) lose the removed heads
        assert {b.bias for b in result.pruned} == {"sliced"}
    weights = {i.name: i for i in model.graph.initializer}
    assert all(p.params_removed > 0 and p.flops_removed > 0 for p in result.pruned)
    assert sum(onnx.numpy_helper.to_array(t).size for t in result.model.graph.initializer) < sum(
        onnx.numpy_helper.to_array(t).size for t in weights.values()
    )


@pytest.mark.slow
@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_timm_deit_tiny_pruned_heads_equal_the_masked_module(exporter):
    timm = import_timm()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    model = exported(module, (1, 3, 224, 224), exporter)
    x = np.random.default_rng(2).standard_normal((1, 3, 224, 224)).astype(np.float32)
    result = check_pruned(module, model, x, seed=3)
    assert len(result.pruned) == 12


@pytest.mark.parametrize(
    ("mode", "exporter", "simplify", "op"),
    [("separate", "dynamo", False, "MatMul"), ("chunk", "dynamo", True, "Split"), ("chunk", "legacy", True, "Slice")],
    ids=["separate-qkv", "chunk-split", "chunk-slice"],
)
def test_other_projection_layouts(mode, exporter, simplify, op):
    """Separate q/k/v Linears (onnxsim would fuse them into com.microsoft::Attention, so the exporter's own graph is
    used), and one qkv Linear chunked along channels: a Split (dynamo) or three Slices (legacy) on the channel axis."""
    module = variant_net(mode)
    model = exported(module, (1, 10, 8), exporter, simplify=simplify)
    assert op in {n.op_type for n in model.graph.node}
    check_pruned(module, model, np.random.default_rng(4).standard_normal((1, 10, 8)).astype(np.float32))


def test_a_block_read_outside_its_path_is_refused_and_left_alone():
    module = variant_net("leak")
    model = exported(module, (1, 10, 8), "dynamo")
    blocks = attention_blocks(model)
    assert blocks[0].refused and "outside" in blocks[0].refused and blocks[1].refused is None
    assert prune_heads(model, {"attn0": [0]}).model is model  # refused: nothing changes
    result = prune_heads(model, {"attn0": [0], "attn1": [1, 2]})
    assert set(result.refused) == {"attn0"} and [b.id for b in result.pruned] == ["attn1"]
    x = np.random.default_rng(5).standard_normal((1, 10, 8)).astype(np.float32)
    assert rel_err(run(result.model, x), masked_reference(module, {"attn1": [1, 2]}, x)) <= EXACT_REL


def test_head_masks_remove_exactly_what_pruning_removes():
    build_fn, shape = GOLDEN["vit"]
    module = build_fn(seed=0)
    model = exported(module, shape, "legacy")
    masked, masks = with_head_masks(model)
    x = np.random.default_rng(6).standard_normal(shape).astype(np.float32)
    plan = {"attn0": [1, 3], "attn1": [0, 1, 2]}
    import onnxruntime as ort

    session = ort.InferenceSession(masked.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {session.get_inputs()[0].name: x}
    for block, name in masks.items():
        mask = np.zeros((1, 4, 1, 1), np.float32)
        mask[0, plan[block]] = 1.0
        feeds[name] = mask
    got = session.run(None, feeds)[0]
    assert rel_err(got, run(prune_heads(model, plan).model, x)) <= EXACT_REL


def test_a_bad_plan_is_a_clear_error():
    build_fn, shape = GOLDEN["vit"]
    model = exported(build_fn(seed=0), shape, "legacy")
    with pytest.raises(UsageError, match="no attention block 'attn7'"):
        prune_heads(model, {"attn7": [0]})
    with pytest.raises(UsageError, match="heads to keep"):
        prune_heads(model, {"attn0": []})
    with pytest.raises(UsageError, match="heads to keep"):
        prune_heads(model, {"attn0": [4]})
