"""Activation statistics of an FP32 ONNX model on calibration data, batch by batch, until the ranges stop moving.

(onnx.ModelProto, CalibrationData, tensor names) -> ONNX Runtime run with those tensors as extra outputs, per batch
  -> running min / max, per-channel |max| (last axis), per-channel mean (axis 1 of NCHW, else the last axis),
     a reservoir of |values| for percentiles
  -> stop adding batches when no tensor's range moved more than `tol` of its width for `patience` batches
The ranges are what INT8 calibration computes; convergence picks how many samples calibration needs (not a constant).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from vdeploy.calibration import CalibrationData

RESERVOIR = 200_000  # |values| kept per tensor for percentiles
CONVERGE_TOL = 0.01  # a range that moves less than 1 % of its width per batch has settled
CONVERGE_PATIENCE = 2  # ... for this many batches in a row
MIN_SAMPLES = 16
BATCH = 8


@dataclass
class TensorStats:
    min: float = np.inf
    max: float = -np.inf
    channel_absmax: np.ndarray | None = None  # per last-axis channel (tensors that are not 4-D)
    _sum: np.ndarray | None = None  # per channel: axis 1 of 4-D (NCHW) tensors, else the last axis
    _count: int = 0
    _values: list = field(default_factory=list)
    _kept: int = 0

    @property
    def channel_mean(self) -> np.ndarray | None:
        return None if self._sum is None else self._sum / max(self._count, 1)

    def add(self, array: np.ndarray, rng: np.random.Generator) -> None:
        array = np.asarray(array, dtype=np.float32)
        self.min, self.max = min(self.min, float(array.min())), max(self.max, float(array.max()))
        if array.ndim == 4:  # NCHW: channels on axis 1 (no last-axis |max|: SmoothQuant reads MatMul inputs only)
            channel_sum = array.sum(axis=(0, 2, 3), dtype=np.float64)
            count = array.size // array.shape[1]
        elif array.ndim >= 1:
            rows = array.reshape(-1, array.shape[-1])
            absmax = np.abs(rows).max(axis=0)
            self.channel_absmax = absmax if self.channel_absmax is None else np.maximum(self.channel_absmax, absmax)
            channel_sum, count = rows.sum(axis=0, dtype=np.float64), rows.shape[0]
        if array.ndim >= 1:
            if self._sum is None or self._sum.shape != channel_sum.shape:
                self._sum, self._count = np.zeros(channel_sum.shape), 0
            self._sum += channel_sum
            self._count += count
        if self._kept < RESERVOIR:
            flat = array.ravel()
            take = flat if flat.size <= RESERVOIR // 8 else flat[rng.integers(0, flat.size, RESERVOIR // 8)]
            self._values.append(np.abs(take))
            self._kept += take.size

    def percentile_absmax(self, q: float) -> float:
        return float(np.quantile(np.concatenate(self._values), q / 100.0)) if self._values else 0.0


@dataclass(frozen=True)
class StatsResult:
    stats: dict[str, TensorStats]
    samples_used: int
    samples_given: int
    converged: bool
    movement: tuple[float, ...]  # the largest relative range movement after each batch

    def to_dict(self) -> dict:
        return {
            "samples_used": self.samples_used,
            "samples_given": self.samples_given,
            "converged": self.converged,
            "batch": BATCH,
            "tolerance": CONVERGE_TOL,
            "movement": [round(m, 5) for m in self.movement],
        }


def activation_stats(
    model,
    calib: CalibrationData,
    names: Iterable[str],
    *,
    converge: bool = True,
    tol: float = CONVERGE_TOL,
    min_samples: int = MIN_SAMPLES,
) -> StatsResult:
    """Statistics of the named float tensors (and of every compute-op input when names is empty)."""
    import onnxruntime as ort

    names = list(dict.fromkeys(names)) or compute_inputs(model)
    probe = _with_outputs(model, names)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # tensor names must survive
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    batch = _batch_of(model) or BATCH  # the model's fixed batch, else BATCH samples per run
    stats = {n: TensorStats() for n in names}
    rng = np.random.default_rng(0)
    movement, used, calm, before = [], 0, 0, None
    for feed in calib.batches(batch):
        for name, value in zip(names, session.run(names, feed)):
            stats[name].add(value, rng)
        used += len(next(iter(feed.values())))
        if used % BATCH and used < len(calib):
            continue  # judge movement once per BATCH samples
        now = {n: (s.min, s.max) for n, s in stats.items()}
        if before is not None:
            moved = max((_moved(before[n], now[n]) for n in names), default=0.0)
            movement.append(moved)
            calm = calm + 1 if moved < tol else 0
            if converge and calm >= CONVERGE_PATIENCE and used >= min_samples:
                break
        before = now
    return StatsResult(stats, used, len(calib), calm >= CONVERGE_PATIENCE, tuple(movement))


def compute_inputs(model) -> list[str]:
    """The float activation inputs of Conv/MatMul/Gemm (the tensors INT8 quantizes), graph order."""
    consts = {t.name for t in model.graph.initializer}
    consts |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    names = []
    for node in model.graph.node:
        if node.op_type in ("Conv", "MatMul", "Gemm"):
            names += [i for i in node.input[:2] if i and i not in consts]
    return list(dict.fromkeys(names))


def _moved(old: tuple[float, float], new: tuple[float, float]) -> float:
    width = new[1] - new[0]
    if not np.isfinite(old[0]) or width <= 0:
        return 0.0 if width <= 0 else 1.0
    return max(old[0] - new[0], new[1] - old[1]) / width


def _batch_of(model) -> int | None:
    dims = model.graph.input[0].type.tensor_type.shape.dim if model.graph.input else []
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None


def _with_outputs(model, names: list[str]):
    import onnx

    probe = onnx.ModelProto.FromString(model.SerializeToString())
    have = {o.name for o in probe.graph.output}
    for name in names:
        if name not in have:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return probe
