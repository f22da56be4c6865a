"""Gather by a constant index, for targets without Gather (Ethos-U55/U65: a ViT's class token x[:, 0]).

Tiers, best first:
- kept (needs Gather).
- gather_to_slice (needs Slice, Squeeze), exact (the same elements, copied):
  Gather(x, i, axis)                        =>  Slice(x, [i], [i + 1], [axis]) -> Squeeze([axis])   (scalar i)
  Gather(x, [i, i + s, ..., i + (n-1)s], axis)  =>  Slice(x, [i], [i + (n-1)s + 1], [axis], [s])    (s >= 1)
A negative index needs the axis's static size (Slice's end for -1 would be 0). Left alone, each with its reason:
computed indices, indices of rank >= 2, and 1-D indices that are not an increasing arithmetic run.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter.pattern import MatchResult, RewriteRule

from vdeploy.graph_passes.rules.base import Direction, Tier, TieredSpec, const, int_attr, ops, opset_of

INT64 = ir.DataType.INT64


def _gather(op, x, indices):
    return op.Gather(x, indices, _outputs=["y"])


def slice_of(x: ir.Value, indices: ir.Value, y: ir.Value) -> tuple[int, int, int, int, bool] | str:
    """(axis, start, stop, step, squeeze) of the Slice that copies the same elements, or why there is none."""
    if indices.const_value is None:
        return "the indices are computed, not a constant"
    idx = indices.const_value.numpy()
    if idx.ndim > 1 or idx.size == 0:
        return f"indices of shape {list(idx.shape)} (a scalar or a 1-D run is sliceable)"
    axis = int_attr(y.producer(), "axis", 0)
    size = x.shape[axis] if x.shape is not None and -x.shape.rank() <= axis < x.shape.rank() else None
    idx = idx.astype(np.int64).reshape(-1)
    if (idx < 0).any():
        if not isinstance(size, int):
            return "a negative index on an axis of unknown size"
        idx = np.where(idx < 0, idx + size, idx)
    step = int(idx[1] - idx[0]) if idx.size > 1 else 1
    if step < 1 or (np.diff(idx) != step).any():
        return "the indices are not an increasing arithmetic run"
    if isinstance(size, int) and not (0 <= idx[0] and idx[-1] < size):
        return f"an index outside the axis (size {size})"
    squeeze = indices.const_value.numpy().ndim == 0
    return axis, int(idx[0]), int(idx[-1]) + 1, step, squeeze


def _check(context, x, indices, y, **_) -> MatchResult:
    run = slice_of(x, indices, y)
    return MatchResult().fail(run, y.producer()) if isinstance(run, str) else MatchResult()


def _slice(op, x, indices, y, **_):
    axis, start, stop, step, squeeze = slice_of(x, indices, y)
    bounds = [const(op, [v], dtype=INT64) for v in (start, stop, axis)]
    if step != 1:
        bounds.append(const(op, [step], dtype=INT64))
    out = op.Slice(x, *bounds)
    if not squeeze:
        return out
    if opset_of(x) >= 13:
        return op.Squeeze(out, const(op, [axis], dtype=INT64))
    return op.Squeeze(out, axes=[axis])


GATHER = TieredSpec(
    name="gather",
    tiers=(
        Tier(Direction.kept, ops("Gather"), ()),
        Tier(
            Direction.decomposed,
            ops("Slice", "Squeeze"),
            (RewriteRule(_gather, _slice, _check, name="gather_to_slice"),),
        ),
    ),
)
