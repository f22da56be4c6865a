"""One latency measurement for every backend: warm up, then time each run with perf_counter + sync.

(session, feeds, warmup, iters) -> Latency(p50, p90, p99, mean, runs, samples_ms)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Latency:
    p50: float
    p90: float
    p99: float
    mean: float
    runs: int
    samples_ms: tuple[float, ...]

    def to_manifest(self) -> dict:
        return {
            "p50": round(self.p50, 4),
            "p90": round(self.p90, 4),
            "p99": round(self.p99, 4),
            "mean": round(self.mean, 4),
            "runs": self.runs,
            "samples_ms": [round(s, 4) for s in self.samples_ms],
        }

    @classmethod
    def from_samples(cls, samples_ms) -> Latency:
        arr = np.asarray(samples_ms, dtype=np.float64)
        p50, p90, p99 = np.percentile(arr, [50, 90, 99])
        return cls(float(p50), float(p90), float(p99), float(arr.mean()), int(arr.size), tuple(arr.tolist()))


def measure(session, feeds: dict, *, warmup: int = 5, iters: int = 50, min_seconds: float = 0.0, power_meter=None):
    """Time `iters` runs (more if `min_seconds` has not passed) after `warmup` untimed runs.

    Returns (Latency, Energy | None); the power meter, when given, covers exactly the timed runs.
    """
    for _ in range(warmup):
        session.run(feeds)
    session.sync()
    samples: list[float] = []
    if power_meter is not None:
        power_meter.start()
    started = time.perf_counter()
    while len(samples) < iters or time.perf_counter() - started < min_seconds:
        t0 = time.perf_counter()
        session.run(feeds)
        session.sync()
        samples.append((time.perf_counter() - t0) * 1000.0)
    energy = power_meter.stop() if power_meter is not None else None
    return Latency.from_samples(samples), energy
