"""Head pruning on a model the suite trains (the digits ViT, 2 blocks x 4 heads): measured importance beats random
choice, and the PyTorch fine-tune hook recovers accuracy that the build then keeps.

trained digits ViT -> export -> head_importance on 64 training images -> prune the 3 least important of 8 heads vs
3 random heads (6 seeded draws) -> top-1 on the 450 test images, each pruned graph run in ONNX Runtime.
vdeploy.prune: plan_for -> mask_heads -> 3 epochs of fine-tuning -> vdeploy.build(prune_heads=plan) -> top-1 kept.
"""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

import vdeploy
from tests.models.digits import accuracy, load_split, trained_digits
from tests.pruning_helpers import exported, masked_reference
from vdeploy import prune
from vdeploy.graph_passes.head_prune import prune_heads
from vdeploy.head_importance import head_importance, heads_to_prune

PRUNED = 3  # of 8 heads
CALIBRATION = 64  # training images the importance is measured on


@pytest.fixture(scope="module")
def digits():
    trained = trained_digits("vit")
    return trained, exported(trained.model, (1, 1, 8, 8), "dynamo")


def top1(model, x: torch.Tensor, y: torch.Tensor) -> float:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name, data = session.get_inputs()[0].name, x.numpy()
    predictions = [session.run(None, {name: data[i : i + 1]})[0].argmax() for i in range(len(data))]
    return float(np.mean(np.array(predictions) == y.numpy()))


def random_plans(heads: dict[str, int], count: int, draws: int) -> list[dict[str, list[int]]]:
    """Seeded uniform choices of `count` heads to remove, redrawn when a block would lose every head."""
    rng, plans = np.random.default_rng(0), []
    pairs = [(b, h) for b, n in heads.items() for h in range(n)]
    while len(plans) < draws:
        gone = {pairs[i] for i in rng.choice(len(pairs), size=count, replace=False)}
        plan = {b: [h for h in range(n) if (b, h) not in gone] for b, n in heads.items()}
        if all(plan.values()):
            plans.append(plan)
    return plans


def test_measured_importance_loses_fewer_points_than_random_heads(digits):
    trained, graph = digits
    base = top1(graph, trained.x_test, trained.y_test)
    assert base == pytest.approx(trained.accuracy, abs=1e-3)
    importance = head_importance(graph, {"input": trained.x_train[:CALIBRATION].numpy()})
    assert all(s > 0 for v in importance.scores.values() for s in v)  # every head changes the output somewhat
    chosen = heads_to_prune(importance.scores, PRUNED)
    assert sum(4 - len(v) for v in chosen.values()) == PRUNED
    drop = base - top1(prune_heads(graph, chosen).model, trained.x_test, trained.y_test)
    heads = {b: len(v) for b, v in importance.scores.items()}
    random_drops = [
        base - top1(prune_heads(graph, plan).model, trained.x_test, trained.y_test)
        for plan in random_plans(heads, PRUNED, draws=6)
    ]
    print(f"top-1 drop, {PRUNED} of 8 heads: importance {100 * drop:.2f} pt, random {100 * np.mean(random_drops):.2f}")
    assert drop < np.mean(random_drops)


def test_fine_tune_hook_recovers_accuracy_and_the_build_keeps_it(digits, tmp_path):
    trained, _ = digits
    model, example = copy.deepcopy(trained.model), (trained.x_test[:1],)
    plan = prune.plan_for(model, example, trained.x_train[:CALIBRATION], PRUNED)
    assert sum(len(v) for v in plan.removed.values()) == PRUNED
    masks = prune.mask_heads(model, plan.keep, example)
    with torch.no_grad():  # the hook removes exactly what zeroing the output projection's columns removes
        hooked = model(trained.x_test[:16]).numpy()
    assert np.allclose(hooked, masked_reference(trained.model, plan.keep, trained.x_test[:16].numpy()), atol=1e-5)
    before = accuracy(model, trained.x_test, trained.y_test)
    after = fine_tune(model, epochs=3)
    print(f"top-1: trained {trained.accuracy:.4f}, {PRUNED} heads masked {before:.4f}, fine-tuned {after:.4f}")
    assert trained.accuracy - after < trained.accuracy - before - 0.01  # measured recovery of more than 1 pt
    np.savez(tmp_path / "eval.npz", inputs=trained.x_test.numpy(), labels=trained.y_test.numpy())
    built = vdeploy.build(
        model, "onnxruntime-cpu", example_inputs=example, out=tmp_path / "out", prune_heads=plan.keep,
        eval_data=tmp_path / "eval.npz", samples=4, iters=1, warmup=0,
    )  # fmt: skip
    assert built.verdict == "pass" and built.manifest["pruning"]["heads_removed"] == PRUNED
    assert built.manifest["accuracy"]["artifact_top1"] == pytest.approx(100 * after, abs=0.01)
    masks.remove()


def fine_tune(model, epochs: int) -> float:
    """Seeded AdamW on the digits training split, one thread (tiny model); returns test top-1."""
    split, threads = load_split(), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.05)
            model.train()
            for _ in range(epochs):
                for idx in torch.randperm(len(split.y_train)).split(64):
                    loss = F.cross_entropy(model(split.x_train[idx]), split.y_train[idx])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
            model.eval()
    finally:
        torch.set_num_threads(threads)
    return accuracy(model, split.x_test, split.y_test)
