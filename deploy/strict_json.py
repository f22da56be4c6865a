"""Strict JSON for manifests and --json output: finite numbers or null, never NaN/Infinity literals.

finite(obj) -> (copy with every non-finite float replaced by None, {dotted.path: "inf" | "-inf" | "nan"})
dumps(obj) -> json.dumps(..., allow_nan=False): the guard, so a non-finite number can never reach a file.
"""

from __future__ import annotations

import json
import math

import numpy as np


def finite(obj, path: str = "") -> tuple[object, dict[str, str]]:
    bad: dict[str, str] = {}
    return _walk(obj, path, bad), bad


def _walk(obj, path: str, bad: dict[str, str]):
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        bad[path or "."] = str(obj)
        return None
    if isinstance(obj, dict):
        return {k: _walk(v, f"{path}.{k}" if path else str(k), bad) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_walk(v, f"{path}[{i}]", bad) for i, v in enumerate(obj)]
    return obj


def with_reasons(document: dict) -> dict:
    """`document` made finite; each replaced number is named in reason.non_finite, and a non-finite numerics
    figure also gets reason.numerics (what the HTML report and the CLI show beside the null)."""
    walked, bad = finite(document)
    clean = dict(walked) if isinstance(walked, dict) else {}
    if bad:
        if not isinstance(clean.get("reason"), dict):  # null (nothing missing) becomes a dict of reasons
            clean["reason"] = {}
        reason = clean["reason"]
        reason["non_finite"] = bad
        if any(key.startswith("numerics") for key in bad):
            reason.setdefault(
                "numerics",
                "not finite (NaN/inf in the artifact's outputs or the reference): the numerics gate fails closed",
            )
    return clean


def dumps(obj, **kwargs) -> str:
    return json.dumps(obj, allow_nan=False, default=_default, **kwargs)


def _default(value):
    if hasattr(value, "item"):  # numpy scalars
        item = value.item()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"non-finite number {item} in strict JSON")
        return item
    if hasattr(value, "value"):  # enums
        return value.value
    raise TypeError(f"cannot serialise {type(value).__name__}")
