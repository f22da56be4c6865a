"""How a --fit build reads: the Pareto table and the verdict in the console, the scatter section of report.html.

manifest["fit"] (deploy/fit/output.py) -> rich table (every measured plan, frontier marked) + the chosen plan +
by how much the nearest plan misses each budget -> and, for report.html, an inline SVG scatter (latency x accuracy
loss; no scripts) with the budget line, the frontier and the chosen plan.
"""

from __future__ import annotations

import html
import math

from rich.table import Table

STATUS_STYLE = {"chosen": "bold green", "fits": "green", "misses": "yellow", "error": "red"}


def _latency(row: dict) -> float | None:
    return row["side_by_side_ms"] if row.get("side_by_side_ms") is not None else row.get("latency_ms")


def _source(row: dict) -> str:
    if row.get("side_by_side_ms") is not None:
        return "side by side"
    return row.get("latency_source") or "-"


def _loss(row: dict) -> float | None:
    return None if row.get("worst_cosine") is None else max(0.0, 1.0 - row["worst_cosine"])


def pareto_table(section: dict) -> Table:
    table = Table(title="fit: plans measured (* = Pareto frontier)", title_justify="left")
    columns = (
        "plan",
        "status",
        "latency ms",
        "x baseline",
        "source",
        "power W",
        "size MB",
        "1 - worst cos",
        "top-1 drop",
    )
    for column in columns:
        table.add_column(column, justify="right" if column not in ("plan", "status", "source") else "left")
    for row in section["trials"]:
        latency, loss = _latency(row), _loss(row)
        status = row["status"]
        table.add_row(
            ("* " if row["frontier"] else "  ") + row["plan"],
            f"[{STATUS_STYLE[status]}]{status}[/]" + (f" ({row['error']})" if row.get("error") else ""),
            "-" if latency is None else f"{latency:.2f}",
            "-" if row.get("ratio_to_baseline") is None else f"{row['ratio_to_baseline']:.2f}",
            _source(row),
            "-" if row.get("power_w") is None else f"{row['power_w']:.2f} ({row['power_source']})",
            "-" if row.get("size_mb") is None else f"{row['size_mb']:.2f}",
            "-" if loss is None else f"{loss:.2e}",
            "-" if row.get("top1_drop_pt") is None else f"{row['top1_drop_pt']:.2f} pt",
        )
    return table


def verdict_lines(section: dict) -> list[str]:
    budgets = ", ".join(f"{k} {v}" for k, v in section["budgets"].items() if k != "latency_stat")
    lines = [f"fit: budgets {budgets or 'none'}; {len(section['trials'])} plans measured in {section['elapsed_s']} s"]
    if section["fits"]:
        lines.append(f"fit: chosen plan (meets every budget at the least accuracy loss): {section['chosen']}")
    else:
        lines.append(f"fit: no plan meets every budget; nearest: {section['chosen']}")
        for name, miss in section["misses"].items():
            if "message" in miss:
                lines.append(f"  misses {name}: {miss['message']}")
            else:
                lines.append(
                    f"  misses {name}: {miss['value']:g} vs budget {miss['limit']:g} "
                    f"(+{miss['over_pct']:g}%, {miss['source']})"
                )
        for name, why in section.get("unmeasured", {}).items():
            lines.append(f"  cannot check {name}: {why}")
    lines += [f"  note: {note}" for note in section["notes"]]
    return lines


def print_fit(section: dict, console) -> None:
    console.print(pareto_table(section))
    for line in verdict_lines(section):
        console.print(line, highlight=False)


# ---- report.html ------------------------------------------------------------------------------------------------

W, H, PAD = 760, 320, 56
FLOOR = 1e-9  # 1 - cosine below this is drawn on the floor of the log axis
COLOURS = {"chosen": "#1a7f37", "fits": "#2da44e", "misses": "#bf8700", "error": "#cf222e"}


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def fit_section_html(manifest: dict) -> str:
    """The '--fit' section of report.html ('' for other builds)."""
    section = manifest.get("fit")
    if not section or "trials" not in section:
        return ""
    rows = [r for r in section["trials"] if _latency(r) is not None and _loss(r) is not None]
    head = "meets every budget" if section["fits"] else "nearest plan (no plan meets every budget)"
    text = f"<p>Chosen plan ({_e(head)}): <b>{_e(section['chosen'])}</b>. {_e(section.get('method', ''))}.</p>"
    return f"<h2>Fit: plans and their cost</h2>{text}{_scatter(rows, section['budgets'].get('latency_ms'))}"


def _scatter(rows: list[dict], budget: float | None) -> str:
    if not rows:
        return "<p class='muted'>no plan has both a latency and an accuracy figure</p>"
    xs = [_latency(r) for r in rows] + ([budget] if budget else [])
    x_hi = max(xs) * 1.1
    ys = [math.log10(max(_loss(r), FLOOR)) for r in rows]
    y_lo, y_hi = min(ys + [math.log10(FLOOR)]), max(ys + [-2.0])

    def px(x):
        return PAD + (W - 2 * PAD) * x / x_hi

    def py(y):
        return H - PAD - (H - 2 * PAD) * (y - y_lo) / ((y_hi - y_lo) or 1.0)

    parts = [
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#1f2328"/>',
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" stroke="#1f2328"/>',
        f'<text x="{W / 2}" y="{H - 16}" text-anchor="middle">latency (ms)</text>',
        f'<text x="14" y="{H / 2}" transform="rotate(-90 14 {H / 2})" text-anchor="middle">'
        "1 - worst-sample cosine (log)</text>",
    ]
    for k in range(5):
        x = x_hi * k / 4
        parts.append(f'<text x="{px(x):.1f}" y="{H - PAD + 16}" text-anchor="middle">{x:.3g}</text>')
    for y in range(math.floor(y_lo), math.ceil(y_hi) + 1):
        if y_lo <= y <= y_hi:
            parts.append(f'<text x="{PAD - 6}" y="{py(y) + 4:.1f}" text-anchor="end">1e{y}</text>')
    if budget:
        parts.append(
            f'<line x1="{px(budget):.1f}" y1="{PAD}" x2="{px(budget):.1f}" y2="{H - PAD}" stroke="#cf222e" '
            f'stroke-dasharray="5 4"/><text x="{px(budget) + 4:.1f}" y="{PAD + 10}">budget {budget:g} ms</text>'
        )
    front = sorted((r for r in rows if r["frontier"]), key=_latency)
    if len(front) > 1:
        points = " ".join(f"{px(_latency(r)):.1f},{py(math.log10(max(_loss(r), FLOOR))):.1f}" for r in front)
        parts.append(f'<polyline points="{points}" fill="none" stroke="#0969da" stroke-dasharray="3 3"/>')
    for r in rows:
        x, y = px(_latency(r)), py(math.log10(max(_loss(r), FLOOR)))
        radius = 7 if r["status"] == "chosen" else 5
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{radius}" fill="{COLOURS[r["status"]]}" '
            f'stroke="{"#0969da" if r["frontier"] else "none"}" stroke-width="2"><title>{_e(r["plan"])}: '
            f"{_latency(r):.3g} ms, 1-cos {_loss(r):.2e}</title></circle>"
        )
    legend = " · ".join(f'<span style="color:{c}">●</span> {k}' for k, c in COLOURS.items())
    svg = f'<svg class="scatter" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img">{"".join(parts)}</svg>'
    return f"{svg}<p class='muted'>{legend} · blue ring / dashed line: Pareto frontier</p>"
