"""Labelled accuracy of an artifact beside the FP32 reference: the number a low-precision release is judged on.

--eval-data FILE.npz (inputs under the model's input name or `inputs`, integer class ids under `labels`)
  -> reference top-1 (PyTorch eager / ORT) and artifact top-1 on the same samples -> drop in points
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vdeploy.errors import VdeployError


class EvalDataError(VdeployError):
    kind = "eval-data"


@dataclass(frozen=True)
class Accuracy:
    samples: int
    reference_top1: float  # percent
    artifact_top1: float

    @property
    def drop_pt(self) -> float:
        return self.reference_top1 - self.artifact_top1

    def to_manifest(self) -> dict:
        return {
            "samples": self.samples,
            "reference_top1": round(self.reference_top1, 3),
            "artifact_top1": round(self.artifact_top1, 3),
            "top1_drop_pt": round(self.drop_pt, 3),
        }


def load_eval_data(path: Path, input_name: str, sample_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(inputs [N, *sample_shape] float32, labels [N]) from an .npz."""
    try:
        with np.load(path) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as exc:
        raise EvalDataError(f"cannot read --eval-data {path}: {exc}", "pass an .npz with inputs and labels") from None
    inputs = arrays.get(input_name, arrays.get("inputs"))
    labels = arrays.get("labels")
    if inputs is None or labels is None:
        raise EvalDataError(
            f"--eval-data {path} needs arrays '{input_name}' (or 'inputs') and 'labels'",
            f"it has: {', '.join(arrays) or 'nothing'}",
        )
    per_sample = tuple(sample_shape[1:]) if sample_shape and sample_shape[0] == 1 else tuple(sample_shape)
    if tuple(inputs.shape[1:]) != per_sample and tuple(inputs.shape[1:]) != tuple(sample_shape):
        raise EvalDataError(
            f"--eval-data inputs have shape {list(inputs.shape)}; the model takes {list(sample_shape)} per sample",
            "resize the data to the model's input shape",
        )
    if labels.shape[0] != inputs.shape[0]:
        raise EvalDataError(
            f"--eval-data has {inputs.shape[0]} inputs but {labels.shape[0]} labels", "give one label per input"
        )
    return inputs.reshape(inputs.shape[0], *sample_shape).astype(np.float32), labels.astype(np.int64).reshape(-1)


def top1(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Percent of samples whose argmax over the last axis equals the label; outputs are [N, ..., C]."""
    return float(np.mean(outputs.reshape(labels.shape[0], -1).argmax(axis=1) == labels) * 100.0)
