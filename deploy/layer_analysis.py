"""`vdeploy debug` on a vendor toolchain: the toolchain's own per-layer numerics and the layer where error explodes.

backend.analyze_layers(job, artifact, worst sample) -> rows in the compiler's execution order, each with cos_entire
(the simulator's value vs the toolchain's FP32 run, errors accumulated) and cos_single (the layer alone, fed FP32
inputs) -> LayerAnalysis: first_below_gate (the first layer whose accumulated cosine falls under the gate's
min_cosine), largest_drop (where the accumulated cosine falls most from the layer before), worst_single (the layer
that loses most on its own)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class LayerRow:
    name: str  # the compiler's tensor/layer name
    op: str  # the compiler's op type (exNorm, exSDPAttention, Conv, ...)
    onnx_node: str | None  # the ONNX node of the legal graph it came from, where the name says
    cos_entire: float
    cos_single: float


@dataclass(frozen=True)
class LayerAnalysis:
    source: str
    sample: int  # the validation sample analysed (the worst one of the build)
    hybrid_level: int  # the INT8 build analysed (0: plain w8a8)
    gate_cosine: float
    rows: tuple[LayerRow, ...]
    first_below_gate: LayerRow | None
    largest_drop: LayerRow | None
    largest_drop_from: float | None  # the accumulated cosine of the layer before it
    worst_single: LayerRow | None
    artifact_hybrid_level: int = 0  # the level the build kept (may differ: the INT8 fallback rebuilt it)
    notes: tuple[str, ...] = field(default_factory=tuple)


def judge(analysis: dict, gate_cosine: float, artifact_level: int = 0) -> LayerAnalysis:
    rows = tuple(
        LayerRow(r["name"], r["op"], r.get("onnx_node"), _finite(r["cos_entire"]), _finite(r["cos_single"]))
        for r in analysis["layers"]
    )
    first = next((r for r in rows if r.cos_entire < gate_cosine), None)
    drop, drop_from, previous = None, None, 1.0
    for row in rows:
        if drop is None or previous - row.cos_entire > (drop_from or 1.0) - drop.cos_entire:
            drop, drop_from = row, previous
        previous = row.cos_entire
    worst = min(rows, key=lambda r: r.cos_single, default=None)
    level = int(analysis.get("hybrid_level", 0))
    notes: tuple[str, ...] = ()
    if level != artifact_level:
        notes = (
            f"analysed the plain INT8 build (quantized_hybrid_level {level}); the build kept level {artifact_level} "
            "because the plain one missed the gate",
        )
    return LayerAnalysis(
        analysis["source"],
        int(analysis.get("sample", 0)),
        level,
        gate_cosine,
        rows,
        first,
        drop,
        drop_from,
        worst,
        artifact_level,
        notes,
    )


def _finite(value: float) -> float:
    return value if math.isfinite(value) else -1.0  # a NaN/inf layer is as bad as it gets


def describe(row: LayerRow | None) -> str:
    if row is None:
        return "none"
    where = f" (ONNX node {row.onnx_node})" if row.onnx_node else ""
    return f"{row.name} [{row.op}]{where}: accumulated cosine {row.cos_entire:.5f}, alone {row.cos_single:.5f}"


def analyse(state, gate_cosine: float) -> LayerAnalysis | None:
    """The backend's own per-layer analysis of the build in `state` (after compare), or None where it has none."""
    from vdeploy.backends.base import BackendBase
    from vdeploy.stages import compile_job

    backend = state.backend
    if type(backend).analyze_layers is BackendBase.analyze_layers:
        return None
    job = compile_job(state)
    worst = min(state.numerics.outputs, key=lambda o: o.worst_cosine)
    raw = backend.analyze_layers(job, state.artifact, worst.worst_cosine_sample)
    if raw is None:
        return None
    return judge(raw, gate_cosine, int(raw.get("artifact_hybrid_level", raw.get("hybrid_level", 0))))
