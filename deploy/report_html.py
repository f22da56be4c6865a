"""Self-contained HTML report of a build (report.html in every bundle): no scripts, no external URLs.

manifest dict -> verdict banner, target facts, budget bars (inline SVG), latency histogram, coverage table, export
Every string taken from the manifest goes through html.escape; the page opens from disk in any browser.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

from vdeploy.fit.report import fit_section_html  # --fit builds: the plans scatter ("" otherwise)
from vdeploy.manifest import measured as measured_figure

BAR_W, BAR_H, BAR_SCALE = 460, 22, 1.5  # the bar track spans 0..150% of a budget; the limit mark sits at 2/3
HIST_W, HIST_H, HIST_PAD = 760, 230, 40
VERDICT_TEXT = {"pass": "PASS", "fail": "FAIL", "unverified": "UNVERIFIED"}

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f6f8fa;color:#1f2328}
main{max-width:1080px;margin:0 auto;padding:20px 28px 40px}
h1{font-size:22px;margin:4px 0 14px}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #d0d7de}
.banner{border-radius:8px;padding:14px 20px;color:#fff;margin-bottom:18px}.banner li{margin:2px 0}
.banner .word{font-size:30px;font-weight:800;letter-spacing:1px;margin-right:14px}.banner ul{margin:8px 0 0}
.banner.pass{background:#1a7f37}.banner.fail{background:#cf222e}.banner.unverified{background:#9a6700}
.facts{display:grid;grid-template-columns:max-content 1fr;gap:3px 18px;background:#fff;border:1px solid #d0d7de;
border-radius:6px;padding:12px 16px}.facts dt{color:#59636e}.facts dd{margin:0;word-break:break-all}
code{font:12.5px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
table{border-collapse:collapse;background:#fff;border:1px solid #d0d7de;margin:4px 0 10px}
th,td{padding:4px 12px;border-bottom:1px solid #eaeef2;text-align:left}th{background:#f0f3f6}td.n{text-align:right}
.budget{display:grid;grid-template-columns:215px 480px 1fr;align-items:center;gap:10px;background:#fff;
border:1px solid #d0d7de;border-radius:6px;padding:6px 12px;margin:6px 0}
.budget .name{font-weight:600}.budget .val{font-size:13px}.budget .muted,.muted{color:#59636e}
.bar .track{fill:#eaeef2}.bar .limit{stroke:#1f2328;stroke-width:2}
.bar.ok .fill{fill:#2da44e}.bar.violated .fill{fill:#cf222e}.budget.violated .val{color:#cf222e;font-weight:600}
.tag{display:inline-block;border-radius:10px;padding:0 8px;font-size:12px;color:#fff}
.tag.ok,.tag.native,.tag.fused{background:#1a7f37}.tag.violated,.tag.unsupported{background:#cf222e}
.tag.unverified,.tag.fallback,.tag.unknown{background:#9a6700}.tag.none,.tag.removed,.tag.decomposed{background:#6e7781}
svg text{font:11px system-ui,sans-serif;fill:#1f2328}.hist .bin{fill:#54aeff}.hist .bin.over{fill:#ff8182}
.hist .pct{stroke:#1f2328;stroke-dasharray:3 3}.hist .budgetline{stroke:#cf222e;stroke-width:2}
"""


def render_html(manifest: dict) -> str:
    """The whole report page for one manifest (pure: no I/O)."""
    model = (manifest.get("model") or {}).get("path", "?")
    title = f"vdeploy report: {model} on {manifest.get('target', '?')}"
    parts = (_banner, _facts, fit_section_html, _budgets_section, _latency_section, _coverage_section, _export_section)
    sections = [part(manifest) for part in parts]
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(title)}</title>'
        f"<style>{CSS}</style></head><body><main><h1>{_e(title)}</h1>{''.join(sections)}</main></body></html>\n"
    )


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _num(value, digits: int = 4) -> str:
    return "n/a" if value is None else _e(f"{value:.{digits}g}" if isinstance(value, float) else value)


def _table(headers: tuple[str, ...], rows: list[tuple], numeric: tuple[int, ...] = ()) -> str:
    """Cells are HTML already escaped by the caller; `numeric` columns are right-aligned."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _banner(m: dict) -> str:
    verdict = str(m.get("verdict", "unverified"))
    kind = verdict if verdict in VERDICT_TEXT else "unverified"
    items = [f"<li>violation: {_e(v.get('message', v))}</li>" for v in m.get("violations") or []]
    items += [f"<li>unverified: {_e(r)}</li>" for r in (m.get("reason") or {}).get("unverified", [])]
    listing = f"<ul>{''.join(items)}</ul>" if items else ""
    summary = {
        "pass": "every budget holds",
        "fail": "a budget or numerics gate failed",
        "unverified": "a budget is set but could not be measured here",
    }[kind]
    word = VERDICT_TEXT.get(verdict, verdict.upper())
    return f'<div class="banner {kind}" id="verdict"><span class="word">{_e(word)}</span>{_e(summary)}{listing}</div>'


def _facts(m: dict) -> str:
    model = m.get("model") or {}
    toolchain = ", ".join(f"{k} {v}" for k, v in (m.get("toolchain") or {}).items())

    def io(items):
        return "; ".join(f"{i.get('name')} {i.get('shape')} {i.get('dtype')}" for i in items or [])

    facts = [
        ("target", m.get("target")),
        ("backend", m.get("backend")),
        ("precision", m.get("precision")),
        ("model", model.get("path")),
        ("format", model.get("format")),
        ("sha256", model.get("sha256") or "n/a"),
        ("inputs", io(m.get("inputs"))),
        ("outputs", io(m.get("outputs"))),
        ("size", f"{_num(m.get('size_mb'))} MB"),
        ("toolchain", toolchain),
    ]
    if cached := ((m.get("measured") or {}).get("cache") or {}).get("built_at"):
        facts.append(("from the build cache", f"the build of {cached} (its figures were measured then)"))
    rows = "".join(f"<dt>{_e(k)}</dt><dd><code>{_e(v)}</code></dd>" for k, v in facts)
    return f'<h2>Build</h2><dl class="facts">{rows}</dl>'


@dataclass(frozen=True)
class BudgetRow:
    name: str  # as in manifest violations: latency_ms, size_mb, power_w, max_rel_err, min_cosine, ...
    label: str
    measured: float | None
    limit: float | None
    unit: str
    note: str | None = None  # why the measurement is missing

    @property
    def minimum(self) -> bool:
        return self.name.startswith("min_")

    def shown(self, value: float | None) -> str:
        if self.minimum and value is not None and 0.999 < value < 1.0:  # cosine: 0.99999999 reads better as 1 - 1e-8
            return f"1 &#8722; {_num(1.0 - value, 3)}"
        return f"{_num(value, 6)}{' ' + _e(self.unit) if self.unit else ''}"

    def usage(self) -> float:
        """Share of the budget used; > 1 breaks it. A minimum (cosine) is read as its distance from 1."""
        measured, limit = float(self.measured), float(self.limit)
        if self.minimum:
            measured, limit = max(0.0, 1.0 - measured), 1.0 - limit
        if limit <= 0:
            return 0.0 if measured <= 0 else math.inf
        return measured / limit


def budget_rows(m: dict) -> list[BudgetRow]:
    budgets, numerics, reason = m.get("budgets") or {}, m.get("numerics") or {}, m.get("reason") or {}
    latency, power = measured_figure(m, "latency_ms") or {}, measured_figure(m, "power_w") or {}
    tol = budgets.get("numerics") or {}
    stat = budgets.get("latency_stat", "p50")
    why = reason.get("numerics")
    rows = [
        BudgetRow(
            "latency_ms",
            f"latency {stat}",
            latency.get(stat),
            budgets.get("latency_ms"),
            "ms",
            reason.get("latency_ms"),
        ),
        BudgetRow("size_mb", "artifact size", m.get("size_mb"), budgets.get("size_mb"), "MB"),
        BudgetRow("max_rel_err", "numerics rel_err", numerics.get("rel_err"), tol.get("max_rel_err"), "", why),
        BudgetRow("min_cosine", "numerics cosine", numerics.get("cosine"), tol.get("min_cosine"), "", why),
        BudgetRow(
            "min_top1_agreement",
            "top-1 agreement",
            numerics.get("top1_agreement"),
            tol.get("min_top1_agreement"),
            "",
            why,
        ),
        BudgetRow(
            "power_w",
            "power" + (f" ({power['source']})" if power.get("source") else ""),
            power.get("mean"),
            budgets.get("power_w"),
            "W",
            reason.get("power_w"),
        ),
    ]
    return [r for r in rows if r.measured is not None or r.name != "min_top1_agreement"]  # top-1: class scores only


def _budget_bar(row: BudgetRow, violated: bool) -> str:
    usage = row.usage()
    state = "violated" if violated else "ok"
    fill = min(usage, BAR_SCALE) / BAR_SCALE * BAR_W
    mark = BAR_W / BAR_SCALE
    over = (
        f'<text x="{BAR_W - 6}" y="15" text-anchor="end" style="fill:#fff;font-weight:700">&#187;</text>'
        if usage > BAR_SCALE
        else ""
    )
    svg = (
        f'<svg class="bar {state}" width="{BAR_W + 10}" height="{BAR_H}" role="img" aria-label="{_e(row.label)}">'
        f'<rect class="track" x="0" y="3" width="{BAR_W}" height="{BAR_H - 6}" rx="3"/>'
        f'<rect class="fill" x="0" y="3" width="{fill:.1f}" height="{BAR_H - 6}" rx="3"/>{over}'
        f'<line class="limit" x1="{mark:.1f}" x2="{mark:.1f}" y1="0" y2="{BAR_H}"/></svg>'
    )
    share = (
        f"{usage * 100:.0f}% of budget"
        if usage < 10
        else f"{usage:,.0f}&#215; the budget"
        if math.isfinite(usage)
        else "budget broken"
    )
    op = "&#8805;" if row.minimum else "&#8804;"
    text = f"{row.shown(row.measured)} &middot; budget {op} {row.shown(row.limit)} &middot; {share}"
    return _budget_row(row, state, svg, f'<span class="val">{text}</span>')


def _budget_row(row: BudgetRow, state: str, middle: str, right: str = "<span></span>") -> str:
    return (
        f'<div class="budget {state}" data-budget="{_e(row.name)}"><span class="name">{_e(row.label)} '
        f'<span class="tag {state}">{state.replace("none", "no budget")}</span></span>{middle}{right}</div>'
    )


def _budgets_section(m: dict) -> str:
    violated = {v.get("budget") for v in m.get("violations") or []}
    parts = []
    for row in budget_rows(m):
        measured = (
            "not measured" + (f": {_e(row.note)}" if row.note else "")
            if row.measured is None
            else f"measured {row.shown(row.measured)}"
        )
        if row.limit is None:
            parts.append(_budget_row(row, "none", f'<span class="muted">{measured}; no budget set</span>'))
        elif row.measured is None:
            parts.append(_budget_row(row, "unverified", f"<span>budget {row.shown(row.limit)}; {measured}</span>"))
        else:
            parts.append(_budget_bar(row, row.name in violated))
    legend = (
        '<p class="muted">Bars show the share of each budget used; the black mark is the budget, the track '
        "ends at 150% (&#187; means far beyond). Cosine is shown as its distance from 1.</p>"
    )
    return f"<h2>Budgets</h2>{legend}{''.join(parts)}"


def _histogram_bins(samples: list[float]) -> tuple[float, float, list[int]]:
    lo, hi = min(samples), max(samples)
    count = min(30, max(6, 2 * math.ceil(math.sqrt(len(samples)))))
    width = (hi - lo) / count or 1.0
    bins = [0] * count
    for s in samples:
        bins[min(count - 1, int((s - lo) / width))] += 1
    return lo, lo + width * count, bins


def _latency_section(m: dict) -> str:
    latency = measured_figure(m, "latency_ms")
    if not latency:
        reason = (m.get("reason") or {}).get("latency_ms", "not measured")
        return f'<h2>Latency</h2><p class="muted">not measured: {_e(reason)}</p>'
    budget = (m.get("budgets") or {}).get("latency_ms")
    summary = (
        f"<p>p50 {_num(latency.get('p50'))} ms &middot; p90 {_num(latency.get('p90'))} ms &middot; "
        f"p99 {_num(latency.get('p99'))} ms &middot; mean {_num(latency.get('mean'))} ms &middot; "
        f"{_e(latency.get('runs', '?'))} runs</p>"
    )
    samples = [float(s) for s in latency.get("samples_ms") or [] if s is not None and math.isfinite(float(s))]
    points = samples or [float(latency[k]) for k in ("p50", "p90", "p99") if latency.get(k) is not None]
    return f"<h2>Latency</h2>{summary}" + (_histogram(points, latency, budget, bool(samples)) if points else "")


def _histogram(samples: list[float], latency: dict, budget: float | None, from_samples: bool) -> str:
    lo, hi, bins = _histogram_bins(samples)
    plot_w, plot_h, top = HIST_W - 2 * HIST_PAD, HIST_H - 2 * HIST_PAD, max(bins)

    def x(v):
        return HIST_PAD + min(max((v - lo) / (hi - lo), 0.0), 1.0) * plot_w

    bin_w = plot_w / len(bins)
    parts = []
    for i, n in enumerate(bins):
        h = n / top * plot_h
        over = " over" if budget is not None and lo + (i + 0.5) * (hi - lo) / len(bins) > budget else ""
        parts.append(
            f'<rect class="bin{over}" x="{HIST_PAD + i * bin_w + 1:.1f}" y="{HIST_PAD + plot_h - h:.1f}" '
            f'width="{bin_w - 2:.1f}" height="{h:.1f}"><title>{n} runs</title></rect>'
        )
    for k in ("p50", "p90", "p99"):
        if latency.get(k) is not None:
            px = x(float(latency[k]))
            parts.append(
                f'<line class="pct" x1="{px:.1f}" x2="{px:.1f}" y1="{HIST_PAD - 6}" y2="{HIST_PAD + plot_h}"/>'
                f'<text x="{px:.1f}" y="{HIST_PAD - 10 - 11 * ("p50", "p90", "p99").index(k)}" '
                f'text-anchor="middle">{k}</text>'
            )
    parts.append(_budget_marker(budget, lo, hi, x, plot_h))
    base = HIST_PAD + plot_h
    parts.append(
        f'<line x1="{HIST_PAD}" x2="{HIST_PAD + plot_w}" y1="{base}" y2="{base}" stroke="#59636e"/>'
        f'<text x="{HIST_PAD}" y="{base + 16}">{_num(lo)} ms</text>'
        f'<text x="{HIST_PAD + plot_w}" y="{base + 16}" text-anchor="end">{_num(hi)} ms</text>'
        f'<text x="{HIST_PAD - 6}" y="{HIST_PAD + 4}" text-anchor="end">{top}</text>'
        f'<text x="{HIST_PAD - 6}" y="{base}" text-anchor="end">0</text>'
    )
    caption = (
        "per-run latency, runs per bin (red: slower than the latency budget)"
        if from_samples
        else "p50/p90/p99 only (no per-run samples in this manifest)"
    )
    return (
        f'<svg class="hist" width="{HIST_W}" height="{HIST_H}" role="img" aria-label="latency histogram">'
        f'{"".join(parts)}</svg><p class="muted">{caption}</p>'
    )


def _budget_marker(budget: float | None, lo: float, hi: float, x, plot_h: int) -> str:
    if budget is None:
        return ""
    label = f"budget {_num(budget)} ms"
    if lo <= budget <= hi:
        px = x(budget)
        return (
            f'<line class="budgetline" x1="{px:.1f}" x2="{px:.1f}" y1="{HIST_PAD - 4}" y2="{HIST_PAD + plot_h}"/>'
            f'<text x="{px + 4:.1f}" y="{HIST_PAD + 10}" style="fill:#cf222e">{label}</text>'
        )
    text = f"&#9664; {label}: every run is slower" if budget < lo else f"{label}: every run is faster &#9654;"
    return (
        f'<text x="{HIST_W / 2:.0f}" y="{HIST_PAD + plot_h + 16}" text-anchor="middle" '
        f'style="fill:#cf222e;font-weight:600">{text}</text>'
    )


def _coverage_section(m: dict) -> str:
    coverage = m.get("coverage") or {}
    before, after = coverage.get("ops_before") or {}, coverage.get("ops_after") or {}
    statuses = coverage.get("status") or {}  # Coverage.to_manifest: op -> status
    ops = sorted(set(before) | set(after) | set(statuses), key=lambda o: (-after.get(o, 0), o))
    rows = [
        (
            f"<code>{_e(op)}</code>",
            _num(before.get(op, 0)),
            _num(after.get(op, 0)),
            f'<span class="tag {_e(statuses.get(op, "native"))}">{_e(statuses.get(op, "native"))}</span>',
        )
        for op in ops
    ]
    rules = coverage.get("rules") or {}
    counts = (
        f"<p>{sum(before.values())} nodes exported, {sum(after.values())} after passes &middot; "
        f"fused {sum((coverage.get('fused') or {}).values())} &middot; decomposed "
        f"{sum((coverage.get('decomposed') or {}).values())} &middot; rules fired {sum(rules.values())}</p>"
    )
    parts = ["<h2>Operator coverage</h2>", counts, _table(("op", "before", "after", "status"), rows, (1, 2))]
    for title, data in (
        ("Fused", coverage.get("fused")),
        ("Decomposed", coverage.get("decomposed")),
        ("Rules fired", rules),
    ):
        if data:
            parts.append(f"<h3>{title}</h3>" + _table(("name", "count"), _code_rows(data, _num), (1,)))
    if coverage.get("approximations"):
        parts.append(
            "<h3>Approximations</h3>"
            + _table(("rule", "max error"), _code_rows(coverage["approximations"], _num), (1,))
        )
    if coverage.get("unsupported"):
        parts.append(f"<p>unsupported: {_e(', '.join(map(str, coverage['unsupported'])))}</p>")
    return "".join(parts)


def _code_rows(data: dict, show) -> list[tuple]:
    return [(f"<code>{_e(k)}</code>", show(v)) for k, v in data.items()]


def _export_section(m: dict) -> str:
    export, artifact = m.get("export") or {}, m.get("artifact") or {}
    simplified = "yes" if export.get("simplified") else f"no ({export.get('simplify_note') or 'skipped'})"
    items = [
        ("exporter", export.get("exporter")),
        ("opset", export.get("opset")),
        ("simplified", simplified),
        ("artifact entry", artifact.get("entry")),
        ("artifact options", artifact.get("options")),
    ]
    items += [("note", n) for n in export.get("notes") or []]
    rows = [(f"{_e(k)}", f"<code>{_e(v)}</code>") for k, v in items if v is not None]
    files = [
        (
            f"<code>{_e(f.get('path'))}</code>",
            _e(f"{f.get('bytes') or 0:,}"),
            f"<code>{_e(str(f.get('sha256'))[:16])}</code>",
        )
        for f in m.get("files") or []
    ]
    return (
        "<h2>Export and files</h2>"
        + _table(("field", "value"), rows)
        + (_table(("file", "bytes", "sha256 (prefix)"), files, (1,)) if files else "")
    )
