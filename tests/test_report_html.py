"""report.html: escaping, budget bars, no external URLs; a real failing build rendered by headless Chromium."""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path

import pytest

from vdeploy.report_html import render_html

CHROMIUM = Path("/usr/bin/chromium")
SAMPLES = [4.1, 4.3, 4.2, 5.0, 4.4, 4.6, 4.2, 4.9, 6.3, 4.5]


def manifest(**changes) -> dict:
    """A passing manifest shaped like pipeline._manifest's, with the keys that may be missing left in."""
    base = {
        "schema": "vdeploy.manifest/1",
        "target": "onnxruntime-cpu",
        "backend": "onnxruntime",
        "precision": "fp32",
        "model": {"path": "models/cnn.pt2", "sha256": "ab" * 32, "format": "torch.export"},
        "files": [{"path": "model.onnx", "sha256": "cd" * 32, "bytes": 123456}],
        "inputs": [{"name": "x", "shape": [3, 32, 32], "dtype": "float32"}],
        "outputs": [{"name": "logits", "shape": [10], "dtype": "float32"}],
        "coverage": {
            "ops_before": {"Conv": 2, "BatchNormalization": 2, "Erf": 1},
            "ops_after": {"Conv": 2, "Gelu": 1},
            "fused": {"Gelu": 1},
            "decomposed": {},
            "unsupported": [],
            "rules": {"gelu.fuse_erf": 1},
            "status": {"Conv": "native", "BatchNormalization": "removed", "Erf": "removed", "Gelu": "fused"},
            "approximations": {"gelu.tanh": 3.1e-4},
        },
        "numerics": {"max_abs": 1e-6, "cosine": 0.99999999, "top1_agreement": 1.0, "rel_err": 2e-6, "samples": 8},
        "latency_ms": {"p50": 4.45, "p90": 5.1, "p99": 6.2, "mean": 4.65, "runs": 10, "samples_ms": SAMPLES},
        "power_w": None,
        "size_mb": 0.12,
        "budgets": {
            "latency_ms": 10.0,
            "latency_stat": "p50",
            "power_w": None,
            "size_mb": 5.0,
            "numerics": {"max_rel_err": 1e-4, "min_cosine": 0.99999, "min_top1_agreement": 1.0},
        },
        "violations": [],
        "verdict": "pass",
        "toolchain": {"vdeploy": "0.1.0", "onnxruntime": "1.31.1"},
        "reason": {"power_w": "no power meter in this vdeploy build"},
        "export": {"exporter": "dynamo", "opset": 18, "notes": [], "simplified": True, "simplify_note": ""},
    }
    m = copy.deepcopy(base)
    m.update(changes)
    return m


def failing_manifest() -> dict:
    m = manifest(verdict="fail")
    m["budgets"]["latency_ms"] = 0.001
    m["violations"] = [
        {
            "budget": "latency_ms",
            "limit": 0.001,
            "measured": 4.45,
            "unit": "ms",
            "message": "latency_ms: measured 4.45 ms, budget <= 0.001 ms",
        }
    ]
    return m


def bar_states(page: str) -> dict[str, str]:
    """budget name -> state of its bar (ok / violated), for the budgets drawn as bars."""
    return dict(re.findall(r'data-budget="(\w+)">(?:(?!</div>).)*?<svg class="bar (\w+)"', page))


def test_pass_banner_and_all_bars_ok():
    page = render_html(manifest())
    assert 'class="banner pass"' in page and ">PASS<" in page
    assert bar_states(page) == {
        "latency_ms": "ok",
        "size_mb": "ok",
        "max_rel_err": "ok",
        "min_cosine": "ok",
        "min_top1_agreement": "ok",
    }
    assert 'class="bar violated"' not in page


def test_violated_bar_only_for_the_failing_budget():
    page = render_html(failing_manifest())
    assert 'class="banner fail"' in page and ">FAIL<" in page
    assert "latency_ms: measured 4.45 ms, budget &lt;= 0.001 ms" in page  # the violation message, escaped
    states = bar_states(page)
    assert states.pop("latency_ms") == "violated"
    assert set(states.values()) == {"ok"} and page.count('class="bar violated"') == 1
    assert "4,450&#215; the budget" in page  # far past the track end: said in words, not just drawn


def test_unverified_banner_lists_reasons_and_missing_latency():
    m = manifest(verdict="unverified", latency_ms=None)
    m["reason"].update(latency_ms="tensorrt not installed on this host", unverified=["latency_ms: tensorrt missing"])
    page = render_html(m)
    assert 'class="banner unverified"' in page and "UNVERIFIED" in page and "latency_ms: tensorrt missing" in page
    assert 'data-budget="latency_ms"><span class="name">latency p50 <span class="tag unverified">' in page
    assert "not measured: tensorrt not installed on this host" in page and 'class="hist"' not in page


def test_every_manifest_string_is_escaped():
    m = failing_manifest()
    m["model"]["path"] = "/tmp/<script>alert(1)</script>/m.pt2"
    m["target"] = 'x86"><img src=x onerror=alert(2)>'
    m["coverage"]["ops_after"]["<b>Op</b>"] = 1
    m["coverage"]["approximations"] = {"<i>rule</i>": "<u>err</u>"}
    m["violations"][0]["message"] = "<script>bad()</script>"
    m["toolchain"]["<svg onload=x>"] = "1"
    page = render_html(m)
    assert "<script" not in page and "<img" not in page and "<b>Op" not in page and "<i>rule" not in page
    assert "<u>" not in page and "<svg onload" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;Op&lt;/b&gt;" in page


def test_self_contained_no_external_urls():
    for page in (render_html(manifest()), render_html(failing_manifest())):
        assert not re.search(r"""(?:src|href|xlink:href)\s*=\s*["']?\s*(?:https?:|//)""", page, re.I)
        assert "http" not in page and "url(" not in page and "@import" not in page and "<script" not in page
        assert page.startswith("<!DOCTYPE html>") and "<style>" in page


def test_histogram_counts_every_run_and_marks_the_budget():
    page = render_html(manifest())
    counts = [int(n) for n in re.findall(r'<rect class="bin[^"]*"[^>]*><title>(\d+) runs</title>', page)]
    assert sum(counts) == len(SAMPLES) and len(counts) >= 6
    assert 'class="budgetline"' not in page and "budget 10 ms: every run is faster" in page
    m = manifest()
    m["budgets"]["latency_ms"] = 4.5  # inside the sample range: a red line, and the slower bins in red
    page = render_html(m)
    assert 'class="budgetline"' in page and 'class="bin over"' in page


def test_histogram_from_percentiles_when_no_samples():
    m = manifest()
    del m["latency_ms"]["samples_ms"]
    page = render_html(m)
    assert 'class="hist"' in page and "p50/p90/p99 only" in page


def test_coverage_table_statuses_and_rule_counts():
    page = render_html(manifest())
    assert re.search(
        r"<code>Gelu</code></td><td class=\"n\">0</td><td class=\"n\">1</td><td>"
        r'<span class="tag fused">fused</span>',
        page,
    )
    assert re.search(r"<code>Erf</code>.*?tag removed", page)
    assert "rules fired 1" in page and "gelu.fuse_erf" in page and "gelu.tanh" in page and "0.00031" in page


def test_sparse_manifest_renders():
    """Older or partial manifests (no coverage, numerics, latency, power) still give a page with the verdict."""
    page = render_html({"verdict": "fail", "target": "x86-cpu"})
    assert ">FAIL<" in page and "not measured" in page
    m = manifest(power_w={"mean": 7.25, "source": "estimate"})
    m["budgets"]["power_w"] = 5.0
    m["violations"] = [{"budget": "power_w", "limit": 5.0, "measured": 7.25, "unit": "W", "message": "power"}]
    assert bar_states(render_html(m))["power_w"] == "violated"


def test_failing_latency_budget_end_to_end(cli, saved_pt2, tmp_path):
    result = cli(
        "build",
        saved_pt2("cnn"),
        "--target",
        "onnxruntime-cpu",
        "--out",
        tmp_path,
        "--iters",
        5,
        "--max-latency-ms",
        "0.001",
        "--json",
    )
    assert result.exit_code == 3, result.stderr
    m = result.json
    assert m["verdict"] == "fail" and [v["budget"] for v in m["violations"]] == ["latency_ms"]
    page = render_html(m)
    assert bar_states(page)["latency_ms"] == "violated" and page.count('class="bar violated"') == 1


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
    ]
    return subprocess.run([str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium missing: run scripts/install_system_deps.sh "
    "as root (apt-get install chromium) to render report.html in headless Chromium",
)
def test_report_renders_in_headless_chromium(cli, saved_pt2, tmp_path):
    result = cli(
        "build",
        saved_pt2("cnn"),
        "--target",
        "onnxruntime-cpu",
        "--out",
        tmp_path / "out",
        "--iters",
        5,
        "--max-latency-ms",
        "0.001",
        "--json",
    )
    assert result.exit_code == 3, result.stderr
    report = tmp_path / "report.html"
    report.write_text(render_html(result.json), encoding="utf-8")
    url = report.resolve().as_uri()

    png = tmp_path / "report.png"
    shot = chromium(f"--screenshot={png}", "--window-size=1200,1600", url, profile=tmp_path / "profile-shot")
    assert png.exists() and png.stat().st_size > 10_000, shot.stderr[-2000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    dom = chromium("--dump-dom", url, profile=tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'class="word">FAIL</span>' in dom.stdout
    assert bar_states(dom.stdout)["latency_ms"] == "violated"
