"""Numerics of an artifact's outputs against the reference (PyTorch eager, or ORT for ONNX inputs).

(reference outputs, artifact outputs, tolerance) -> NumericsReport(per output: max_abs, rel_err, cosine, top1)
Outputs are stacked over the reference samples along a new leading axis: [samples, *output_shape]. Cosine is kept
pooled and per sample (worst sample + its index: the gate must hold for it too); max_abs is the worst sample's already.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OutputNumerics:
    name: str
    max_abs: float
    rel_err: float  # max_abs / max |reference|
    cosine: float
    top1_agreement: float | None  # None unless the output looks like class scores [samples, 1, C]
    worst_cosine: float = 1.0  # the lowest per-sample cosine, and which sample
    worst_cosine_sample: int = 0
    max_abs_sample: int = 0  # the sample where max_abs was seen

    def to_manifest(self) -> dict:
        return {
            "name": self.name,
            "max_abs": self.max_abs,
            "rel_err": self.rel_err,
            "cosine": self.cosine,
            "top1_agreement": self.top1_agreement,
            "per_sample": {
                "worst_cosine": self.worst_cosine,
                "worst_cosine_sample": self.worst_cosine_sample,
                "max_abs_sample": self.max_abs_sample,
            },
        }


@dataclass(frozen=True)
class NumericsReport:
    outputs: tuple[OutputNumerics, ...]
    samples: int

    @property
    def max_abs(self) -> float:
        return max(o.max_abs for o in self.outputs)

    @property
    def rel_err(self) -> float:
        return max(o.rel_err for o in self.outputs)

    @property
    def cosine(self) -> float:
        return min(o.cosine for o in self.outputs)

    @property
    def worst_sample_cosine(self) -> float:
        return min(o.worst_cosine for o in self.outputs)

    @property
    def top1_agreement(self) -> float | None:
        values = [o.top1_agreement for o in self.outputs if o.top1_agreement is not None]
        return min(values) if values else None

    def to_manifest(self) -> dict:
        worst = min(self.outputs, key=lambda o: o.worst_cosine)
        return {
            "max_abs": self.max_abs,
            "cosine": self.cosine,
            "top1_agreement": self.top1_agreement,
            "rel_err": self.rel_err,
            "samples": self.samples,
            "worst_sample_cosine": worst.worst_cosine,
            "worst_sample": {"output": worst.name, "index": worst.worst_cosine_sample},
            "per_output": [o.to_manifest() for o in self.outputs],
        }


def compare(reference: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> NumericsReport:
    """Both dicts map output name -> [samples, *shape]; the reference's names and order are authoritative."""
    if len(outputs) != len(reference):
        raise ValueError(f"artifact has {len(outputs)} outputs, reference has {len(reference)}")
    results = []
    for (name, ref), out in zip(reference.items(), outputs.values()):
        results.append(_compare_one(name, np.asarray(ref, np.float64), np.asarray(out, np.float64)))
    samples = next(iter(reference.values())).shape[0]
    return NumericsReport(tuple(results), samples)


def _compare_one(name: str, ref: np.ndarray, out: np.ndarray) -> OutputNumerics:
    if ref.shape != out.shape:
        raise ValueError(f"output {name!r}: artifact shape {out.shape} != reference shape {ref.shape}")
    if not np.all(np.isfinite(out)):
        return OutputNumerics(name, float("inf"), float("inf"), 0.0, _top1(ref, out), 0.0)
    diff = float(np.max(np.abs(out - ref))) if ref.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    rel = diff / scale if scale > 0 else diff
    per_sample = [_cosine(r, o) for r, o in zip(ref, out)] or [1.0]
    worst = int(np.argmin(per_sample))
    at = int(np.argmax(np.abs(out - ref).reshape(len(ref), -1).max(axis=1))) if ref.size else 0
    return OutputNumerics(name, diff, rel, _cosine(ref, out), _top1(ref, out), per_sample[worst], worst, at)


def _cosine(ref: np.ndarray, out: np.ndarray) -> float:
    a, b = ref.ravel(), out.ravel()
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / norms) if norms > 0 else float(np.array_equal(a, b))


def _top1(ref: np.ndarray, out: np.ndarray) -> float | None:
    scores = ref.reshape(ref.shape[0], -1)
    per_sample_rows = int(np.prod(ref.shape[1:-1])) if ref.ndim > 2 else 1
    if ref.ndim < 2 or per_sample_rows != 1 or scores.shape[1] < 2:
        return None
    agree = np.argmax(scores, axis=1) == np.argmax(out.reshape(out.shape[0], -1), axis=1)
    return float(np.mean(agree))
