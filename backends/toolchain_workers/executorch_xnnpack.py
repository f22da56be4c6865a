"""Worker (arm toolchain venv): PyTorch .pt2 -> ExecuTorch program with every op XNNPACK can take delegated -> .pte.

request JSON (stdin) -> torch.export.load -> [int8: XNNPACKQuantizer (symmetric, per-channel) + prepare_pt2e,
  calibration samples, convert_pt2e, re-export] -> to_edge_transform_and_lower(XnnpackPartitioner) -> to_executorch
  -> model.pte + placement (delegated vs portable-kernel ops) -> reply JSON (last stdout line)

Standard library and the vendor packages only (no vdeploy in this venv).
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np


def progress(text: str) -> None:
    print(f"progress: {text}", flush=True)


def load_inputs(path: str) -> list[np.ndarray]:
    with np.load(path) as data:
        return [data[f"in{i}"] for i in range(len(data.files))]


def quantized_program(program, example: tuple, calibration: list[np.ndarray]):
    """PT2E static INT8 for XNNPACK: symmetric per-channel weights, per-tensor activations, observed on the samples."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    module = torch.export.export(program.module(), example).module(check_guards=False)
    prepared = prepare_pt2e(module, quantizer)
    for i in range(len(calibration[0])):
        prepared(*(torch.from_numpy(a[i : i + 1]) for a in calibration))
    return torch.export.export(convert_pt2e(prepared), example)


def op_placement(edge_program) -> dict:
    """Ops of the lowered graph: each XNNPACK delegate call vs ops left to ExecuTorch's portable CPU kernels."""
    graph = edge_program.exported_program().graph_module.graph
    delegated, portable = 0, Counter[str]()
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if "executorch_call_delegate" in name:
            delegated += 1
        elif name not in ("getitem",):
            portable[name] += 1
    return {"source": "executorch", "delegate_calls": delegated, "portable_ops": dict(portable)}


def main() -> None:
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    request = json.loads(sys.stdin.read())
    out = Path(request["out_dir"])
    started = time.monotonic()
    program = torch.export.load(request["program"])
    samples = load_inputs(request["samples"])
    example = tuple(torch.from_numpy(a[:1]) for a in samples)
    info: dict[str, object] = {}
    if request["precision"] == "int8":
        calibration = load_inputs(request["calibration"])
        progress(f"quantizing with the XNNPACK quantizer (PT2E, {len(calibration[0])} calibration samples)")
        program = quantized_program(program, example, calibration)
        info["quantizer"] = "XNNPACKQuantizer symmetric per-channel (PT2E)"
        info["calibration_samples"] = len(calibration[0])
    progress("lowering to ExecuTorch with the XNNPACK partitioner")
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    placement = op_placement(edge)
    executorch_program = edge.to_executorch()
    (out / request["pte"]).write_bytes(executorch_program.buffer)
    import importlib.metadata as md

    print(
        json.dumps(
            {
                "ok": True,
                "placement": placement,
                "info": info,
                "compile_s": round(time.monotonic() - started, 2),
                "versions": {p: md.version(p) for p in ("executorch", "torch")},
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:
        traceback.print_exc()
        text = str(exc).strip().splitlines()
        print(
            json.dumps(
                {
                    "ok": False,
                    "message": f"{type(exc).__name__}: {(text[0] if text else '')[:300]}",
                    "hint": "see the worker log",
                }
            ),
            flush=True,
        )
