"""Judging a set of trials: the Pareto frontier, the choice, latency on a common scale, side-by-side rounds.

trials (measured, some re-timed side by side beside the baseline) -> latency_of (the side-by-side figure where there
is one) / ratio_to (to the baseline, from one batch where possible) -> frontier (no other trial better on latency,
loss and size at once) -> choose (the least-loss fit, else the nearest miss); retime_rounds: what a time budget
leaves for a side-by-side batch.
"""

from __future__ import annotations

from vdeploy.fit.trial import Trial
from vdeploy.validate.interleave import SETTLE_S

# side-by-side timing: rounds by default, the fewest worth a comparison, inferences per turn
RETIME_ROUNDS, MIN_RETIME_ROUNDS, RETIME_RUNS = 10, 4, 3


def retime_rounds(left_s: float, artifacts: int, startup_s: float, round_s: float) -> int:
    """Side-by-side rounds that fit in `left_s`: `artifacts` children, each starting in `startup_s`, one round
    of all of them taking `round_s`; at most RETIME_ROUNDS."""
    if round_s <= 0:
        return RETIME_ROUNDS
    return max(0, min(RETIME_ROUNDS, int((left_s - artifacts * startup_s) / round_s)))


def round_s(batch: list[Trial]) -> float:
    """One side-by-side round of `batch`: RETIME_RUNS inferences each at its latest latency, plus the pauses."""
    return sum(RETIME_RUNS * (latency_of(t) or 0.0) / 1000 + SETTLE_S for t in batch)


def latency_of(t: Trial) -> float | None:
    return t.side_by_side_ms if t.side_by_side_ms is not None else t.latency_ms


def ratio_to(trial: Trial, base: Trial) -> float | None:
    """trial / baseline latency: from the side-by-side timing when both have one, else from their own runs."""
    if trial.ratio_to_base is not None:
        return trial.ratio_to_base
    return trial.latency_ms / base.latency_ms if trial.latency_ms and base.latency_ms else None


def frontier(trials: list[Trial]) -> list[Trial]:
    """The measured trials no other trial beats on latency, accuracy loss and size at once."""

    def key(t: Trial):
        latency = t.side_by_side_ms if t.side_by_side_ms is not None else t.latency_ms
        return (latency if latency is not None else float("inf"), sum(t.loss), t.size_mb or 0.0)

    ok = [t for t in trials if t.ok]
    front = []
    for t in ok:
        a = key(t)
        dominated = any(
            all(x <= y for x, y in zip(key(o), a)) and any(x < y for x, y in zip(key(o), a)) for o in ok if o is not t
        )
        if not dominated:
            front.append(t)
    return sorted(front, key=key)


def choose(trials: list[Trial]) -> Trial:
    """The fitting trial with the least loss (ties: the faster); else the nearest miss."""

    def latency(t: Trial) -> float:
        value = t.side_by_side_ms if t.side_by_side_ms is not None else t.latency_ms
        return value if value is not None else float("inf")

    fitting = [t for t in trials if t.fits]
    if fitting:
        return min(fitting, key=lambda t: (t.loss, latency(t)))
    ok = [t for t in trials if t.ok] or trials
    return min(ok, key=lambda t: (t.distance(), t.loss, latency(t)))
