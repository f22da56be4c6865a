"""What a release run shows and writes: live progress, the summary table, release.json and release.html.

ReleaseRun -> release_dict (release.json, schema vdeploy.release/1) -> summary_table (rich) / render_html (one
self-contained page: a model × target grid, each cell linking to its bundle's report.html).
"""

from __future__ import annotations

import html
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from vdeploy.matrix.runner import ReleaseRun, status_of

SCHEMA = "vdeploy.release/1"
COLOURS = {
    "pass": "#1b7f3b",
    "fail": "#b3261e",
    "unverified": "#8a6d00",
    "error": "#6b1d9b",
    "crashed": "#6b1d9b",
    "queued": "#777",
    "running": "#1c5fb8",
    "validating": "#1c5fb8",
}
RICH = {"pass": "green", "fail": "red", "unverified": "yellow", "error": "magenta", "crashed": "magenta"}


def release_dict(result: ReleaseRun) -> dict:
    cells = []
    for run in result.runs:
        record = run.record
        cells.append(
            {
                "model": run.cell.model,
                "target": run.cell.target,
                "precision": record.get("precision") or run.cell.precision,
                "status": status_of(record),
                "key": run.key,
                "cached": bool(record.get("cached")),
                "log": str(run.log),
                **{
                    k: record.get(k)
                    for k in (
                        "verdict",
                        "bundle",
                        "report",
                        "latency_p50_ms",
                        "latency_source",
                        "power_w",
                        "power_source",
                        "energy",
                        "cosine",
                        "size_mb",
                        "violations",
                        "error",
                        "attempts",
                        "node",
                        "host",
                        "pid",
                        "seconds",
                        "files",
                        "device_validation",
                    )
                },
            }
        )
    built = [r for r in result.runs if not r.record.get("cached")]
    return {
        "schema": SCHEMA,
        "name": result.release.name,
        "out": str(result.out),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_s": round(result.wall_s, 2),
        "ray": result.ray_info or None,
        "built": len(built),
        "cached": len(result.runs) - len(built),
        "exit_code": result.exit_code,
        "cells": cells,
    }


def write_outputs(result: ReleaseRun) -> dict:
    """release.json and release.html in the release's output folder (each written whole, then renamed)."""
    data = release_dict(result)
    result.out.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("release.json", json.dumps(data, indent=2, default=str) + "\n"),
        ("release.html", render_html(data)),
    ):
        tmp = result.out / f".{name}.tmp-{os.getpid()}"
        tmp.write_text(text)
        tmp.replace(result.out / name)
    return data


def _figure(cell: dict) -> str:
    """p50 and energy (or power), each labelled with its source unless it was measured (one label when shared)."""
    figures = []
    if cell.get("latency_p50_ms") is not None:
        figures.append((f"{cell['latency_p50_ms']:.3g} ms", _estimate(cell.get("latency_source"))))
    if cell.get("energy"):
        figures.append((f"{cell['energy']['mj']:.3g} mJ", _estimate(cell.get("power_source"))))
    elif cell.get("power_w") is not None:
        figures.append((f"{cell['power_w']:.3g} W", _estimate(cell.get("power_source"))))
    labels = {label for _, label in figures}
    if len(labels) == 1:
        return " · ".join(text for text, _ in figures) + (f" ({labels.pop()})" if figures[0][1] else "")
    return " · ".join(text + (f" ({label})" if label else "") for text, label in figures)


def _estimate(source: str | None) -> str:
    return source if source and "estimate" in source else ""


def summary_table(data: dict):
    from rich.table import Table

    table = Table(
        title=f"release {data['name']}: {len(data['cells'])} cells, {data['built']} built, "
        f"{data['cached']} unchanged, {data['wall_s']:.1f} s",
        title_justify="left",
    )
    for column in ("model", "target", "precision", "status", "p50 / energy", "time", "bundle or error"):
        table.add_column(column)
    for cell in data["cells"]:
        status = cell["status"]
        seconds = "cached" if cell["cached"] else f"{cell['seconds']:.1f} s" if cell.get("seconds") else "-"
        device = cell.get("device_validation") or {}
        note = _rel(cell["bundle"], Path(data["out"])) if cell.get("bundle") else cell.get("error") or ""
        if device:
            note += f" (device: {device.get('status')}{', ' + device['reason'] if device.get('reason') else ''})"
        if cell.get("error") and cell.get("bundle"):
            note = cell["error"]
        table.add_row(
            cell["model"],
            cell["target"],
            cell["precision"] or "-",
            f"[{RICH.get(status, '')}]{status}[/]",
            _figure(cell) or "-",
            seconds,
            note,
        )
    return table


def render_html(data: dict) -> str:
    """A self-contained page: inline CSS, no scripts; links are relative to the release folder."""
    out = Path(data["out"])
    models = list(dict.fromkeys(c["model"] for c in data["cells"]))
    columns = list(dict.fromkeys((c["target"], c["precision"]) for c in data["cells"]))
    grid = {(c["model"], c["target"], c["precision"]): c for c in data["cells"]}
    esc = html.escape
    rows = []
    for model in models:
        tds = []
        for target, precision in columns:
            cell = grid.get((model, target, precision))
            if cell is None:
                tds.append("<td class=none>—</td>")
                continue
            status = cell["status"]
            body = f"<b>{esc(status)}</b>"
            figure = _figure(cell)
            if figure:
                body += f"<br>{esc(figure)}"
            if cell.get("cosine") is not None:
                body += f"<br>cos {cell['cosine']:.6f}"
            if cell.get("report"):
                body += f'<br><a href="{esc(_rel(cell["report"], out))}">report</a>'
            if cell.get("error"):
                body += f"<br><small>{esc(cell['error'][:300])}</small>"
            for violation in cell.get("violations") or []:
                body += f"<br><small>{esc(violation)}</small>"
            device = cell.get("device_validation") or {}
            if device:
                body += f"<br><small>device: {esc(str(device.get('status')))} {esc(device.get('reason', ''))}</small>"
            body += f'<br><a class=log href="{esc(_rel(cell["log"], out))}">log</a>'
            if cell["cached"]:
                body += " <small>(unchanged)</small>"
            tds.append(f'<td style="border-left:6px solid {COLOURS.get(status, "#777")}">{body}</td>')
        rows.append(f"<tr><th>{esc(model)}</th>{''.join(tds)}</tr>")
    head = "".join(f"<th>{esc(t)}<br><small>{esc(p or 'default')}</small></th>" for t, p in columns)
    counts: dict[str, int] = {}
    for cell in data["cells"]:
        counts[cell["status"]] = counts.get(cell["status"], 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    ray = data.get("ray") or {}
    where = (
        f"Ray {esc(str(ray.get('address')))}: {len(ray.get('nodes') or [])} node(s), {ray.get('cpus')} CPUs"
        if ray
        else "no Ray started (every cell unchanged)"
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>release {esc(data["name"])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.4em .6em;vertical-align:top;text-align:left}}th{{background:#f4f4f4}}
td.none{{color:#aaa}}small{{color:#555}}a.log{{color:#555}}</style></head><body>
<h1>release {esc(data["name"])}</h1>
<p>{len(data["cells"])} cells: {esc(summary)} · {data["built"]} built, {data["cached"]} unchanged ·
wall {data["wall_s"]:.1f} s · {where} · exit code {data["exit_code"]} · {esc(data["finished"])}</p>
<table><tr><th>model</th>{head}</tr>
{chr(10).join(rows)}
</table></body></html>
"""


def _rel(path: str, out: Path) -> str:
    try:
        return Path(path).relative_to(out).as_posix()
    except ValueError:
        return Path(path).as_uri()


class Display:
    """Progress: a live rich table on a terminal, plain lines (one per state change) otherwise."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.live: Any = None  # rich.live.Live once started
        self.seen: dict[str, tuple[str, int]] = {}
        self.tty = not quiet and sys.stderr.isatty()

    def __enter__(self):
        return self

    def __call__(self, runs) -> None:
        if self.quiet:
            return
        if self.tty:
            from rich.console import Console
            from rich.live import Live

            if self.live is None:
                self.live = Live(self._table(runs), console=Console(stderr=True), refresh_per_second=4)
                self.live.start()
            self.live.update(self._table(runs))
            return
        for run in runs:
            state = run.state if run.state != "done" else status_of(run.record)
            if self.seen.get(run.cell.cell_id) != (state, run.attempts):
                self.seen[run.cell.cell_id] = (state, run.attempts)
                print(f"vdeploy matrix: {_label(run)}: {state}{_detail(run)}", file=sys.stderr, flush=True)

    def _table(self, runs):
        from rich.table import Table

        table = Table(title="vdeploy matrix", title_justify="left")
        for column in ("model", "target", "precision", "state", "attempts", "time"):
            table.add_column(column)
        now = time.perf_counter()
        for run in runs:
            state = run.state if run.state != "done" else status_of(run.record)
            elapsed = run.record.get("seconds_total") or (now - run.started if run.started else None)
            table.add_row(
                run.cell.model,
                run.cell.target,
                run.cell.precision or "-",
                f"[{RICH.get(state, 'cyan')}]{state}[/]",
                str(run.attempts or "-"),
                f"{elapsed:.0f} s" if elapsed else "-",
            )
        return table

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.stop()


def _label(run) -> str:
    return f"{run.cell.model} × {run.cell.target} ({run.cell.precision or 'default'})"


def _detail(run) -> str:
    if run.state == "cached":
        return " (unchanged, bundle verified)"
    if run.state == "running" and run.attempts > 1:
        return f" (attempt {run.attempts})"
    if run.state == "done":
        record = run.record
        if record.get("error"):
            return f": {record['error']}"
        return f" ({record.get('seconds_total', 0):.1f} s) {record.get('bundle', '')}"
    return ""
