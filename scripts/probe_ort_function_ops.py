"""Which ONNX function ops does ONNX Runtime run by expanding their function body? (for targets.yaml)

onnx schemas with a function body (has_function / has_context_dependent_function), minus the ops ORT's CPU kernel
registry lists -> each op's node test cases from onnx.backend.test.case.node -> run in ORT (CPUExecutionProvider,
optimisations off) -> an op counts when at least one of its cases runs and matches the expected outputs.

Usage: .venv/bin/python scripts/probe_ort_function_ops.py   (prints the list for the onnxruntime-cpu profile)
"""

from __future__ import annotations

import sys
import warnings

import numpy as np

RANDOM_OPS = ("Bernoulli",)


def function_ops() -> set[str]:
    """Default-domain ops whose latest schema has a function body (plain or context dependent)."""
    import onnx.defs

    latest: dict[str, object] = {}
    for schema in onnx.defs.get_all_schemas_with_history():
        if schema.domain in ("", "ai.onnx") and not schema.deprecated:
            if schema.name not in latest or schema.since_version > latest[schema.name].since_version:
                latest[schema.name] = schema
    return {name for name, s in latest.items() if s.has_function or s.has_context_dependent_function}


def kernel_ops() -> set[str]:
    from onnxruntime.capi.onnxruntime_pybind11_state import get_all_opkernel_def

    return {
        k.op_name
        for k in get_all_opkernel_def()
        if k.provider == "CPUExecutionProvider" and k.domain in ("", "ai.onnx")
    }


def as_array(value) -> np.ndarray:
    """A data-set entry as numpy (onnx keeps some, e.g. FLOAT16/FLOAT8 cast cases, as TensorProto)."""
    from onnx import TensorProto, numpy_helper

    if isinstance(value, list):  # a sequence input/output (SequenceMap)
        return [as_array(v) for v in value]
    return numpy_helper.to_array(value) if isinstance(value, TensorProto) else np.asarray(value)


def runs_in_ort(case) -> bool:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(case.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        for inputs, expected in case.data_sets:
            names = [i.name for i in case.model.graph.input][: len(inputs)]
            outputs = session.run(None, dict(zip(names, map(as_array, inputs))))
            if case.model.graph.node[0].op_type in RANDOM_OPS:
                continue  # sampled output: running is the test
            for got, want in zip(outputs, map(as_array, expected)):
                if isinstance(want, list):
                    same = all(np.allclose(g, w, rtol=1e-3, atol=1e-5) for g, w in zip(got, want))
                    if len(got) != len(want) or not same:
                        return False
                elif not np.allclose(
                    np.asarray(got, dtype=np.float64),
                    np.asarray(want, dtype=np.float64),
                    rtol=max(case.rtol, 1e-3),
                    atol=max(case.atol, 1e-5),
                    equal_nan=True,
                ):
                    return False
        return True
    except Exception:  # noqa: BLE001 (ORT raises Fail/InvalidGraph/NotImplemented/...: all mean "does not run")
        return False


def probe() -> list[str]:
    from onnx.backend.test.case.node import collect_testcases

    candidates = function_ops() - kernel_ops()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    by_op: dict[str, list] = {}
    for case in cases:
        ops = {n.op_type for n in case.model.graph.node if n.domain in ("", "ai.onnx")}
        if "_expanded" not in case.name and len(ops) == 1 and ops <= candidates:
            by_op.setdefault(ops.pop(), []).append(case)
    return sorted(op for op, op_cases in by_op.items() if any(runs_in_ort(c) for c in op_cases))


if __name__ == "__main__":
    import onnx
    import onnxruntime

    ops = probe()
    print(
        f"# onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}: {len(ops)} function ops ORT runs",
        file=sys.stderr,
    )
    print(", ".join(ops))
