"""Where rknn-toolkit2 really runs each ONNX op: one-op models from ONNX's own node tests, compiled for an RKNN NPU.

onnx.backend.test.case.node cases -> per op type, the first single-node case that converts to opset <= 19 (its
  non-first inputs frozen into initializers, the node named probe_<op>) -> toolchain worker rknn_probe (RKNN.build
  fp16 with RKNN_LOG_LEVEL=5) -> each op: NPU (every compiler layer made from the node on the NPU), CPU (some on the
  CPU), folded (no layer left: constant-folded or removed), refused (the compiler rejected the model)
-> markdown table on stdout, JSON with every layer to --json. targets.yaml's rk3588-npu profile cites a run of it.

    .venv/bin/python scripts/probe_rknn_ops.py [--platform rk3588] [--json docs/rknn_op_probe.json] [OP ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Beyond the profile: ops its source marks missing, and common ones worth knowing about.
EXTRA = (
    "Abs Acos Asin Atan Ceil Celu Cosh CumSum Einsum GatherND GroupNormalization Hardmax Mean Neg NonZero Not Or "
    "Range Reciprocal ReduceL2 ReduceLogSumExp ReduceProd ReduceSumSquare Round Selu Shrink Sign Sinh Softsign Sum "
    "Tan ThresholdedRelu TopK Trilu Xor"
).split()
PROBE_PREFIX = "probe_"
LAYOUT = ("Reshape", "Transpose")
LAYOUT_OPS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Dropout")  # ops that are layout
# the form vision models use, where a name says it (else rank-4 cases first, then by name)
PREFERRED = {
    "LayerNormalization": "test_layer_normalization_3d_axis_negative_1_epsilon",  # [B, tokens, C] as in ViTs
    "AveragePool": "test_averagepool_2d_default",  # not the ceil/dilated/1-d/3-d variants
    "MaxPool": "test_maxpool_2d_default",
    "Resize": "test_resize_upsample_scales_nearest",  # the profile's source: nearest/bilinear only
    "ReduceMean": "test_reduce_mean_negative_axes_keepdims_random",  # one axis, not all of them
    "ReduceSum": "test_reduce_sum_negative_axes_keepdims_random",
    "ReduceMax": "test_reduce_max_negative_axes_keepdims_random",
    "ReduceMin": "test_reduce_min_negative_axes_keepdims_random",
}  # what the compiler inserts around a node for its own layouts


def one_op_model(case, op: str):
    """The case's model with one float graph input (the rest frozen as initializers), opset <= 19, IR 9; or None."""
    import numpy as np
    import onnx
    from onnx import numpy_helper, version_converter

    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    if len(model.graph.node) != 1 or model.graph.node[0].op_type != op or not case.data_sets:
        return None
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset > 19:
        try:
            model = version_converter.convert_version(model, 19)
        except Exception:  # noqa: BLE001 - ops newer than opset 19 have no down-conversion
            return None
    inputs = list(case.data_sets[0][0])
    graph = model.graph
    if len(inputs) != len(graph.input):
        return None
    kept = None
    for value, array in zip(list(graph.input), inputs):
        array = np.asarray(array)
        if array.dtype == object:  # sequences, optionals, strings: not a tensor the probe can freeze or feed
            return None
        if kept is None and array.dtype == np.float32 and array.ndim >= 1:
            kept = value.name
            continue
        graph.initializer.append(numpy_helper.from_array(array, value.name))
        graph.input.remove(value)
    if kept is None:
        return None
    graph.node[0].name = f"{PROBE_PREFIX}{op}"
    model.ir_version = 9
    return model


def cases_by_op(ops: list[str], per_op: int = 6) -> dict[str, list]:
    """Up to per_op usable cases for each op (name order); the first one the compiler builds decides."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    usable: dict[str, list] = {}
    for case in sorted(cases, key=lambda c: c.name):
        if "_expanded" in case.name or not case.model.graph.node:
            continue
        op = case.model.graph.node[0].op_type
        if op in ops:
            model = one_op_model(case, op)
            if model is not None:
                usable.setdefault(op, []).append((case.name, model))
    # vision graphs are 4-D: rank-4 cases first, then by name
    return {
        op: sorted(found, key=lambda c: (c[0] != PREFERRED.get(op), abs(_rank(c[1]) - 4), c[0]))[:per_op]
        for op, found in usable.items()
    }


def _rank(model) -> int:
    return len(model.graph.input[0].type.tensor_type.shape.dim)


def verdict(result: dict) -> str:
    """NPU / CPU by the compiler layers that do the op's work: those named after the probe node, else (renamed:
    Slice -> Gather, ReduceMean -> Conv) every layer; layout layers (Reshape/Transpose the compiler puts at the
    model's input/output) count only when the op itself is a layout op."""
    if result["status"] != "built":
        return "refused"
    layers = result["layers"]
    if result["op"] not in LAYOUT_OPS:
        layers = [layer for layer in layers if layer["op"] not in LAYOUT]
    own = [layer for layer in layers if layer["name"].split(":", 1)[-1].startswith(PROBE_PREFIX)] or layers
    if not own:
        return "folded"
    return "CPU" if any(layer["device"] != "NPU" for layer in own) else "NPU"


def main() -> None:
    import onnx

    from vdeploy.backends import toolchains
    from vdeploy.targets import load_catalog

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ops", nargs="*", help="op types (default: the rk3588-npu profile plus a list of others)")
    parser.add_argument("--platform", default="rk3588")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    profile = sorted(op.op_type for op in load_catalog().get("rk3588-npu").op_set if op.domain == "")
    ops = args.ops or sorted(set(profile) | set(EXTRA))
    chosen = cases_by_op(ops)
    with tempfile.TemporaryDirectory(prefix="vdeploy-rknn-probe-") as tmp:
        models = []
        for op, candidates in sorted(chosen.items()):
            for case, model in candidates:
                path = Path(tmp) / f"{case}.onnx"
                onnx.save(model, str(path))
                models.append({"op": op, "case": case, "path": str(path)})
        reply = toolchains.call(
            "rknn",
            "rknn_probe",
            {"models": models, "target_platform": args.platform, "work_dir": str(Path(tmp) / "work")},
            timeout_s=3600,
            progress=lambda m: print(m, file=sys.stderr, flush=True),
        )
    rows = []
    for op in sorted(chosen):
        tried = [r for r in reply["results"] if r["op"] == op]
        first = next((r for r in tried if r["status"] == "built"), tried[0])
        rows.append({**first, "verdict": verdict(first), "in_profile": op in profile, "cases_tried": len(tried)})
    untested = sorted(set(ops) - set(chosen))
    print(f"rknn-toolkit2 {reply['versions']['rknn-toolkit2']}, target_platform {args.platform}, fp16 build\n")
    print("| op | ONNX node test case | compiler placement | in the profile | compiler layers / error |")
    print("|---|---|---|---|---|")
    for r in rows:
        layers = ", ".join(f"{x['op']}@{x['device']}" for x in r["layers"]) if r["status"] == "built" else r["error"]
        print(f"| {r['op']} | {r['case']} | {r['verdict']} | {'yes' if r['in_profile'] else 'no'} | {layers[:160]} |")
    print(f"\nno usable one-node case (not probed): {', '.join(untested) or 'none'}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"versions": reply["versions"], "platform": args.platform, "results": rows, "untested": untested},
                indent=1,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
