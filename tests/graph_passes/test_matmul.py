"""Batched MatMul rank: rank-4 MatMul <-> Reshape/rank-3 MatMul/Reshape, by the MatMulRank4 capability pseudo-op."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from tests.graph_passes.attention_graphs import (
    attention_model,
    export_canonical,
    feeds_for,
    max_error,
    op_list,
    run_ort,
)
from tests.models import GOLDEN, example_input
from vdeploy.graph_passes.legalize import legalize
from vdeploy.graph_passes.rules import ALL_SPECS
from vdeploy.graph_passes.rules.attention import ATTENTION_SPECS
from vdeploy.graph_passes.rules.base import Direction
from vdeploy.graph_passes.rules.matmul import BATCHED_MATMUL, MATMUL_RANK4

TOL = 1e-6  # max abs error / max |output|: a reshape around a MatMul changes no arithmetic (measured: 0)
RANK3_ONLY = frozenset()  # a target without the capability
RANK4_OK = frozenset({MATMUL_RANK4})


def matmul_model(a_shape, b_shape, *, b_const: bool = False) -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, a_shape)]
    inits = []
    if b_const:
        inits.append(
            onnx.numpy_helper.from_array(np.random.default_rng(1).standard_normal(b_shape).astype(np.float32), "b")
        )
    else:
        inputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, b_shape))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["y"])],
        "mm",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    return onnx.shape_inference.infer_shapes(model)


def legalized(proto: onnx.ModelProto, op_set: frozenset):
    model = ir.from_proto(proto)
    return model, legalize(model, op_set, specs=(BATCHED_MATMUL,))


def matmul_input_ranks(model: ir.Model) -> list[tuple[int, int]]:
    return [(n.inputs[0].shape.rank(), n.inputs[1].shape.rank()) for n in model.graph if n.op_type == "MatMul"]


def assert_same_outputs(proto: onnx.ModelProto, model: ir.Model) -> None:
    feeds = feeds_for(proto)
    error, scale = max_error(run_ort(model, feeds)[0], run_ort(proto, feeds)[0])
    assert error <= TOL * scale, f"max abs error {error:.3g} > {TOL} x output scale {scale:.3g}"


# ---- decompose: rank 4 -> rank 3 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a_shape, b_shape, b_const",
    [
        ([2, 3, 5, 4], [2, 3, 4, 6], False),  # attention's two MatMuls
        ([1, 4, 4, 8], [8, 16], True),  # Swin's MLP on [B, H, W, C] with a weight
        ([2, 2, 3, 5, 4], [2, 2, 3, 4, 6], False),  # rank 5: all leading dims flatten
    ],
    ids=["batched", "weight", "rank5"],
)
def test_rank4_matmul_splits_for_rank3_targets(a_shape, b_shape, b_const):
    proto = matmul_model(a_shape, b_shape, b_const=b_const)
    model, result = legalized(proto, RANK3_ONLY)
    assert result.rules == {"matmul_rank4_to_rank3": 1}
    assert result.choices["batched_matmul"] == Direction.decomposed
    reshapes = 2 if len(b_shape) == 2 else 3
    assert dict(op_list(model)) == {"Reshape": reshapes, "MatMul": 1}
    assert all(ra <= 3 and rb <= 3 for ra, rb in matmul_input_ranks(model))
    assert_same_outputs(proto, model)


@pytest.mark.parametrize(
    "a_shape, b_shape, expands",
    [
        ([2, 3, 5, 4], [1, 3, 4, 6], 1),  # broadcast batch dims: b expanded to a's
        ([2, 3, 5, 4], [3, 4, 6], 1),  # rank-3 right side broadcast over the first dim
        ([3, 1, 3, 4], [1, 2, 4, 2], 2),  # onnx's test_matmul_bcast: both sides broadcast
        ([1, 1, 3, 4], [2, 3, 4, 5], 0),  # a's batch dims all 1: a becomes 2-D
        ([1, 2, 4, 3], [3], 0),  # matrix x vector
    ],
    ids=["broadcast", "mixed-rank", "both-broadcast", "a-unbatched", "vector"],
)
def test_broadcast_matmul_splits_for_rank3_targets(a_shape, b_shape, expands):
    proto = matmul_model(a_shape, b_shape)
    model, result = legalized(proto, RANK3_ONLY)
    assert result.rules == {"matmul_rank4_to_rank3": 1} and op_list(model)["Expand"] == expands
    assert all(ra <= 3 and rb <= 3 for ra, rb in matmul_input_ranks(model))
    assert_same_outputs(proto, model)


@pytest.mark.parametrize(
    "a_shape, b_shape",
    [
        ([2, 5, 4], [2, 4, 6]),  # already rank 3
        (["B", 3, 5, 4], ["B", 3, 4, 6]),  # unknown batch
    ],
    ids=["rank3", "dynamic"],
)
def test_matmul_left_alone(a_shape, b_shape):
    model, result = legalized(matmul_model(a_shape, b_shape), RANK3_ONLY)
    assert not result.rules and dict(op_list(model)) == {"MatMul": 1}


def test_targets_with_the_capability_keep_rank4():
    model, result = legalized(matmul_model([2, 3, 5, 4], [2, 3, 4, 6]), RANK4_OK)
    assert not result.rules and result.choices["batched_matmul"] == Direction.fused
    assert dict(op_list(model)) == {"MatMul": 1}


# ---- fuse: the flattening sandwich -> one MatMul; round trip ------------------------------------------------------


@pytest.mark.parametrize(
    "a_shape, b_shape, b_const",
    [
        ([2, 3, 5, 4], [2, 3, 4, 6], False),
        ([1, 4, 4, 8], [8, 16], True),
        ([2, 2, 3, 5, 4], [2, 2, 3, 4, 6], False),
    ],
    ids=["batched", "weight", "rank5"],
)
def test_fuse_of_decompose_gives_the_matmul_back(a_shape, b_shape, b_const):
    proto = matmul_model(a_shape, b_shape, b_const=b_const)
    split, _ = legalized(proto, RANK3_ONLY)
    model, result = legalized(ir.to_proto(split), RANK4_OK)
    assert result.rules == {"matmul_rank3_to_rank4": 1}
    assert dict(op_list(model)) == {"MatMul": 1}
    assert_same_outputs(proto, model)


def test_fuse_declines_a_reshape_that_mixes_batch_and_rows():
    """Reshape [2,3,5,4] -> [6*5, 1, 4] is not a batch flatten: folding it into one MatMul would be wrong."""
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3, 5, 4])
    w = onnx.numpy_helper.from_array(np.ones((4, 6), np.float32), "w")
    shapes = [
        onnx.numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("s1", [30, 1, 4]), ("s2", [2, 3, 5, 6]))
    ]
    nodes = [
        helper.make_node("Reshape", ["a", "s1"], ["a3"]),
        helper.make_node("MatMul", ["a3", "w"], ["y3"]),
        helper.make_node("Reshape", ["y3", "s2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [a], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, *shapes]
    )
    proto = onnx.shape_inference.infer_shapes(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    )
    model, result = legalized(proto, RANK4_OK)
    assert not result.rules and op_list(model)["Reshape"] == 2


# ---- with attention: a decomposed attention leaves no rank-4 MatMul on a rank-3 target -----------------------------


def test_spec_order_attention_then_batched_matmul():
    assert ALL_SPECS[: len(ATTENTION_SPECS) + 1] == (*ATTENTION_SPECS, BATCHED_MATMUL)


def test_decomposed_attention_split_to_rank3():
    proto = attention_model(bias="window", batch=4)
    model = ir.from_proto(proto)
    result = legalize(model, RANK3_ONLY, specs=(*ATTENTION_SPECS, BATCHED_MATMUL))
    assert result.rules["attention_to_matmul_softmax"] == 1 and result.rules["matmul_rank4_to_rank3"] == 2
    assert all(ra <= 3 and rb <= 3 for ra, rb in matmul_input_ranks(model))
    feeds = feeds_for(proto)
    error, scale = max_error(run_ort(model, feeds)[0], run_ort(proto, feeds)[0])
    assert error <= 1e-5 * scale


def test_golden_vit_has_no_rank4_matmul_on_rank3_target():
    build, shape = GOLDEN["vit"]
    x = example_input(shape)
    proto = export_canonical(build(seed=0), x, "legacy")
    model = ir.from_proto(proto)
    result = legalize(model, RANK3_ONLY, specs=(*ATTENTION_SPECS, BATCHED_MATMUL))
    assert result.rules["matmul_rank4_to_rank3"] >= 2 * result.rules["attention_to_matmul_softmax"] > 0
    assert all(ra <= 3 and rb <= 3 for ra, rb in matmul_input_ranks(model))
    feeds = {proto.graph.input[0].name: x.numpy()}
    error, scale = max_error(run_ort(model, feeds)[0], run_ort(proto, feeds)[0])
    assert error <= 1e-5 * scale
