"""ONNX's own backend node tests through legalization: the outcome of one (case, target).

case (onnx.backend.test.case.node TestCase) + target -> legalize for its op set -> post-condition ->
LEGAL (nothing outside the op set) / FALLBACK (leftovers the target runs on its fallback device) / REFUSED
(leftovers and no fallback) / UNKNOWN (leftovers the target's documents leave open) -> for every outcome but
REFUSED: the legal graph run in ONNX Runtime on the case's inputs, against the case's expected outputs.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, numpy_helper

from vdeploy.errors import UnsupportedOpsError
from vdeploy.graph_passes.legalize import check_legal, legalize, usable_ops

FAMILIES = re.compile(r"^test_(layer_normalization|gelu|softmax|erf$|matmul|batchnorm|gemm|attention)")
MAX_OPSET = 23  # attention* at opset 23; later-opset cases (24/25: nonpad_kv_seqlen, windows) are out of scope


def selected(cases) -> list:
    """The families the issue names, at opset <= 23, without onnx's own *_expanded variants (the function bodies
    of the same ops: legalization's decompositions are what is under test) and without the bfloat16 cases (ONNX
    Runtime 1.31's CPU provider has no bfloat16 Expand/Add kernels, so not even the unchanged graph runs here)."""
    return [
        c
        for c in cases
        if FAMILIES.match(c.name)
        and "_expanded" not in c.name
        and "_bf16" not in c.name
        and max(o.version for o in c.model.opset_import if o.domain in ("", "ai.onnx")) <= MAX_OPSET
    ]


class Outcome(NamedTuple):
    kind: str  # legal | fallback | refused | unknown
    left: tuple[str, ...]  # op ids outside the op set after legalization
    reason: str  # the refusal's message ("" when legal)
    max_err: float | None  # worst |got - want| / tolerance over outputs (<= 1 passes); None when refused
    approximated: bool  # an approximating rule fired (tolerance: its documented error)


def _array(value) -> np.ndarray:
    return numpy_helper.to_array(value) if isinstance(value, TensorProto) else np.asarray(value)


def run_case(case, target) -> Outcome:
    model = ir.serde.deserialize_model(case.model)
    result = legalize(model, target.op_set, fallback=target.spec.fallback)
    left = result.unsupported
    kind, reason = "legal", ""
    if left:
        try:
            check_legal(result.model, usable_ops(target.op_set, result.model.opset_imports), target.spec.fallback)
            kind = "fallback"
        except UnsupportedOpsError as exc:
            kind, reason = "refused", exc.one_line()
        if kind == "refused" and {o for o in left} <= {str(op) for op in target.unknown}:
            kind = "unknown"
    if kind == "refused":
        return Outcome(kind, left, reason, None, bool(result.approximations))
    legal = ir.serde.serialize_model(result.model)
    onnx.checker.check_model(legal)
    return Outcome(kind, left, reason, _worst_error(case, legal, result.approximations), bool(result.approximations))


def _worst_error(case, legal: onnx.ModelProto, approximations) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(legal.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    worst = 0.0
    for inputs, expected in case.data_sets:
        outputs = session.run(None, dict(zip(names, map(_array, inputs))))
        for got, want in zip(outputs, map(_array, expected)):
            got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
            # the case's own tolerance (float16 cases: fp16 resolution), widened to an approximating rule's
            # documented error where one fired
            fp16 = any(_array(i).dtype == np.float16 for i in inputs)
            atol = max(case.atol, 2e-3 if fp16 else 1e-6, *approximations.values())
            tol = atol + max(case.rtol, 2e-3 if fp16 else 1e-4) * np.abs(want)
            with np.errstate(invalid="ignore"):  # inf - inf where both are -inf: equal, counted as 0 below
                err = np.where((np.isnan(want) & np.isnan(got)) | (got == want), 0.0, np.abs(got - want) / tol)
            new_nans = float(np.isnan(got).sum() - np.isnan(want).sum())  # NaN where the reference has a number
            worst = max(worst, float(np.nanmax(err)) if err.size else 0.0, new_nans)
    return worst
