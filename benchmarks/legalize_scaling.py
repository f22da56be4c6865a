"""Legalization pass time against graph size: should grow linearly in the number of nodes.

ViT (the golden test ViT: dim 64, 4 heads, 32x32 image) with growing depth, exported by the legacy exporter at
opset 17 (the exporter that leaves the most nodes: shape arithmetic, Constants), legalized for three op sets:
onnxruntime-cpu (little to rewrite), ethos-u55 from targets.yaml, and a conv-only NPU (ORT ops minus MatMul, Gemm,
LayerNormalization, Softmax, Erf, Gelu, BatchNormalization: every family rewrites). Times are the best of 3 runs of
legalize() on a fresh copy (shape inference included): wall clock and this process's CPU time (the 2-core
machines here are shared, so CPU time is the steadier figure), with CPU microseconds per input node, the rewrites
made and the node count after.

Run: .venv/bin/python benchmarks/legalize_scaling.py [depth ...]
"""

from __future__ import annotations

import io
import sys
import time
import warnings
from pathlib import Path

import onnx
import onnx_ir as ir
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.models: the golden ViT

from tests.models.vit import build_vit  # noqa: E402
from vdeploy.graph_passes.legalize import legalize  # noqa: E402
from vdeploy.targets import OpId, load_catalog  # noqa: E402

DEPTHS = (4, 16, 64, 128, 256)


def export(depth: int) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(build_vit(depth=depth), (torch.randn(1, 3, 32, 32),), buffer, dynamo=False, opset_version=17)
    return onnx.load_from_string(buffer.getvalue())


def op_sets() -> dict[str, frozenset]:
    catalog = load_catalog()
    ort_ops = catalog.op_set("onnxruntime-cpu")
    gone = {
        OpId("", n) for n in ("MatMul", "Gemm", "LayerNormalization", "Softmax", "Erf", "Gelu", "BatchNormalization")
    }
    sets = {"onnxruntime-cpu": ort_ops, "conv-only-npu": ort_ops - gone}
    if "ethos-u55" in catalog.data.op_profiles:
        sets["ethos-u55"] = catalog.op_set("ethos-u55")
    return sets


def timed(proto: onnx.ModelProto, op_set: frozenset, runs: int = 3) -> tuple[float, float, int, int]:
    """(best wall seconds, best CPU seconds of this process, rewrites, nodes after) over `runs` fresh copies."""
    walls, cpus, fired, after = [], [], 0, 0
    for _ in range(runs):
        model = ir.from_proto(proto)
        wall, cpu = time.perf_counter(), time.process_time()
        result = legalize(model, op_set, fallback=True)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        fired, after = sum(result.rules.values()), sum(1 for _ in model.graph.all_nodes())
    return min(walls), min(cpus), fired, after


def main(depths: tuple[int, ...]) -> None:
    sets = op_sets()
    print(f"{'depth':>5} {'nodes':>6}  " + "  ".join(f"{name:>38}" for name in sets))
    print(
        f"{'':>5} {'':>6}  "
        + "  ".join(f"{'wall s':>7} {'cpu s':>6} {'cpu us/n':>8} {'rewrites':>8} {'after':>6}" for _ in sets)
    )
    for depth in depths:
        proto = export(depth)
        cells = []
        for op_set in sets.values():
            wall, cpu, fired, after = timed(proto, op_set)
            cells.append(f"{wall:7.2f} {cpu:6.2f} {1e6 * cpu / len(proto.graph.node):8.1f} {fired:8d} {after:6d}")
        print(f"{depth:5d} {len(proto.graph.node):6d}  " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main(tuple(int(a) for a in sys.argv[1:]) or DEPTHS)
