"""Gather by a constant index as Slice (+ Squeeze) for targets without Gather: exact, and refused with a reason."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from vdeploy.graph_passes.rules.base import Direction
from vdeploy.graph_passes.rules.gather import GATHER, slice_of

from .helpers import ORT_OPS, build, legalized, op_types, run, without

NO_GATHER = without("Gather")
X = np.random.default_rng(0).standard_normal((2, 7, 5)).astype(np.float32)


def _gather(indices: str, axis: int, out_shape: str, opset: int = 18) -> str:
    return (
        f"g (float[2,7,5] x) => (float[{out_shape}] y) {{\n"
        f"  i = Constant <value = {indices}> ()\n"
        f"  y = Gather <axis = {axis}> (x, i)\n}}"
    )


@pytest.mark.parametrize(
    "indices, axis, out_shape, expect",
    [
        ("int64 {0}", 1, "2,5", ["Slice", "Squeeze"]),  # the class token x[:, 0]
        ("int64 {-1}", 1, "2,5", ["Slice", "Squeeze"]),  # the last token: end must not be 0
        ("int64 {3}", -1, "2,7", ["Slice", "Squeeze"]),
        ("int64[3] {1, 2, 3}", 1, "2,3,5", ["Slice"]),
        ("int64[3] {0, 2, 4}", 1, "2,3,5", ["Slice"]),  # a stride
        ("int32[1] {1}", 0, "1,7,5", ["Slice"]),
    ],
)
@pytest.mark.parametrize("opset", [11, 18])
def test_constant_gather_becomes_an_exact_slice(indices, axis, out_shape, expect, opset):
    model = build(_gather(indices, axis, out_shape), opset=opset)
    out, result = legalized(model, NO_GATHER, GATHER)
    assert op_types(out) == expect and result.rules == {"gather_to_slice": 1}
    assert result.choices["gather"] == Direction.decomposed
    np.testing.assert_array_equal(run(out, {"x": X})[0], run(model, {"x": X})[0])


@pytest.mark.parametrize(
    "indices, out_shape, reason",
    [
        ("int64[3] {2, 1, 0}", "2,3,5", "not an increasing arithmetic run"),
        ("int64[3] {0, 1, 3}", "2,3,5", "not an increasing arithmetic run"),
        ("int64[2,2] {0, 1, 1, 2}", "2,2,2,5", "indices of shape [2, 2]"),
    ],
)
def test_gathers_a_slice_cannot_copy_stay_and_say_why(indices, out_shape, reason):
    model = build(_gather(indices, 1, out_shape))
    out, result = legalized(model, NO_GATHER, GATHER)
    assert "Gather" in op_types(out) and not result.rules
    (node,) = [n for n in ir.from_proto(model).graph if n.op_type == "Gather"]
    indices = node.inputs[1]
    indices.const_value = indices.producer().attributes["value"].as_tensor()  # as legalization's folding sets it
    assert reason in slice_of(node.inputs[0], indices, node.outputs[0])


def test_computed_indices_stay():
    model = build("g (float[2,7,5] x, int64 i) => (float[2,5] y) {\n  y = Gather <axis = 1> (x, i)\n}")
    out, result = legalized(model, NO_GATHER, GATHER)
    assert "Gather" in op_types(out) and not result.rules


def test_kept_where_the_target_has_gather():
    model = build(_gather("int64 {0}", 1, "2,5"))
    out, result = legalized(model, ORT_OPS, GATHER)
    assert op_types(out) == ["Gather"] and result.choices["gather"] == Direction.kept
