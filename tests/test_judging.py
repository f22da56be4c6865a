"""compare() and judge(): numbers computed by hand, verdict rules."""

from __future__ import annotations

import numpy as np
import pytest

from vdeploy.targets import Budgets, Tolerance
from vdeploy.validate.budgets import Verdict, judge
from vdeploy.validate.compare import compare
from vdeploy.validate.measure import Latency

TOL = Tolerance(max_rel_err=1e-3, min_cosine=0.999, min_top1_agreement=1.0)


def test_compare_numbers_by_hand():
    ref = np.array([[[1.0, 3.0, 2.0]], [[4.0, 0.0, 0.0]]])  # 2 samples of [1, 3] class scores
    out = np.array([[[1.0, 2.0, 2.5]], [[4.0, 0.0, 0.1]]])
    report = compare({"logits": ref}, {"y": out})
    assert report.max_abs == pytest.approx(1.0)
    assert report.rel_err == pytest.approx(1.0 / 4.0)
    cos = (ref.ravel() @ out.ravel()) / (np.linalg.norm(ref) * np.linalg.norm(out))
    assert report.cosine == pytest.approx(cos)
    assert report.top1_agreement == 0.5  # sample 0 flips from class 1 to class 2


def test_non_classification_output_has_no_top1():
    ref = np.ones((2, 1, 4, 8, 8))
    assert compare({"fmap": ref}, {"y": ref}).top1_agreement is None


def test_nan_output_is_worst_case():
    ref = np.ones((1, 1, 4))
    report = compare({"a": ref}, {"a": np.full_like(ref, np.nan)})
    assert report.max_abs == float("inf") and report.cosine == 0.0


def latency(ms):
    return Latency.from_samples([ms] * 10)


def test_judge_pass_fail_unverified():
    good = compare({"a": np.ones((2, 1, 3))}, {"a": np.ones((2, 1, 3))})
    kwargs = dict(numerics=good, size_mb=10.0, power_w=None, missing={"power_w": "no meter"})
    assert judge(Budgets(latency_ms=50), TOL, latency=latency(10), **kwargs).verdict is Verdict.passed
    failed = judge(Budgets(latency_ms=5), TOL, latency=latency(10), **kwargs)
    assert failed.verdict is Verdict.failed
    assert [str(v) for v in failed.violations] == ["latency_ms: measured 10 ms, budget <= 5 ms"]
    unverified = judge(Budgets(latency_ms=50, power_w=5), TOL, latency=latency(10), **kwargs)
    assert unverified.verdict is Verdict.unverified and unverified.unverified == ("power_w: no meter",)
    assert judge(Budgets(size_mb=1), TOL, latency=latency(1), **kwargs).verdict is Verdict.failed


def test_judge_numerics_gate():
    ref = np.array([[[1.0, 2.0, 3.0]]])
    bad = compare({"a": ref}, {"a": ref + 0.1})
    judgement = judge(Budgets(), TOL, numerics=bad, latency=latency(1), size_mb=1, power_w=None, missing={})
    assert {v.budget for v in judgement.violations} == {"max_rel_err"}


def test_latency_percentiles():
    lat = Latency.from_samples(list(range(1, 101)))
    assert (lat.p50, lat.runs) == (50.5, 100)
    assert lat.p90 == pytest.approx(90.1) and lat.p99 == pytest.approx(99.01)
