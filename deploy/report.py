"""Console report of a build (rich tables; plain text when stdout is not a terminal).

manifest dict -> coverage table, numerics, latency, budgets, verdict
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

VERDICT_STYLE = {"pass": "bold green", "fail": "bold red", "unverified": "bold yellow"}
PLAIN_WIDTH = 160  # rich would wrap at 80 columns when stdout is a pipe or a CI log


def make_console() -> Console:
    import sys

    return Console() if sys.stdout.isatty() else Console(width=PLAIN_WIDTH)


def print_build(manifest: dict, bundle, console: Console | None = None) -> None:
    console = console or make_console()
    console.print(
        f"[bold]vdeploy build[/] {manifest['model']['path']} -> target [bold]{manifest['target']}[/] "
        f"({manifest['backend']}, {manifest['precision']})"
    )
    export = manifest["export"]
    console.print(
        f"export: {export['exporter']} exporter, opset {export['opset']}"
        + ("" if export["simplified"] else f" ({export['simplify_note']})")
    )
    for note in export["notes"]:
        console.print(f"  note: {note}")
    console.print(coverage_table(manifest["coverage"]))
    placement = manifest["artifact"].get("details", {}).get("placement")
    if placement and "fallen_back" in placement:
        console.print(placement_line(placement))
    tuning = manifest["artifact"].get("details", {}).get("tuning")
    if tuning:
        console.print(tuning_line(tuning))
    if manifest.get("reason", {}).get("calibration"):
        console.print(f"[bold yellow]warning[/] {manifest['reason']['calibration']}")
    if manifest.get("pruning"):
        console.print(pruning_line(manifest["pruning"], manifest["verdict"]))
    console.print(numerics_line(manifest["numerics"], manifest["budgets"]["numerics"]))
    if manifest.get("accuracy"):
        acc = manifest["accuracy"]
        console.print(
            f"accuracy on {acc['samples']} labelled samples: top-1 {acc['artifact_top1']:.2f}% vs reference "
            f"{acc['reference_top1']:.2f}% (drop {acc['top1_drop_pt']:.2f} pt)"
        )
    from vdeploy.manifest import measured

    console.print(latency_line(measured(manifest, "latency_ms"), manifest["budgets"]))
    peak = measured(manifest, "peak_mem_mb")
    console.print(
        f"size: {manifest['size_mb']:.2f} MB"
        + (f" (budget {manifest['budgets']['size_mb']} MB)" if manifest["budgets"]["size_mb"] else "")
        + (f"; peak memory {peak:.0f} MB" if peak else "")
    )
    power = measured(manifest, "power_w")
    console.print(
        f"power: {power['mean']:.2f} W, {power['energy_mj']:.2f} mJ/inference ({power['source']})"
        if power
        else f"power: not measured ({manifest['reason'].get('power_w', 'no meter')})"
    )
    _print_verdict(manifest, console)
    cached = (manifest.get("measured") or {}).get("cache") or {}
    if cached.get("hit"):
        console.print(
            f"from the build cache: the build of {cached['built_at']} (figures measured then; --no-cache rebuilds)"
        )
    console.print(f"bundle: {bundle}")


def pruning_line(pruning: dict, verdict: str) -> str:
    """What the prune stage removed; on a failed build, that the numerics include pruning's cost."""
    line = (
        f"pruning: {pruning['heads_removed']} of {pruning['heads_total']} attention heads removed "
        f"({pruning['params_removed']:,} parameters, {pruning['flops_removed'] / 1e6:.1f} MFLOP per inference)"
    )
    if pruning["refused"]:
        line += f"; left unpruned: {', '.join(pruning['refused'])}"
    if verdict == "fail":
        line += (
            "\n[bold yellow]note[/] numerics and top-1 are measured against the UNPRUNED model: the violations "
            "below include the accuracy cost of the pruned heads"
        )
    return line


def placement_line(placement: dict) -> str:
    """The compiler's own NPU/CPU split (rknn), beside our op table: per ONNX op, then the layers that fell back."""
    counts = placement["counts"]
    per_op = ", ".join(
        f"{op} " + "/".join(f"{d} {n}" for d, n in cell.items() if n) for op, cell in placement["onnx_ops"].items()
    )
    fallen = ", ".join(f"{f['op']} ({f['onnx_node'] or 'inserted by the compiler'})" for f in placement["fallen_back"])
    return (
        f"compiler placement: {counts['NPU']} layers on the NPU, {counts['CPU']} on the CPU "
        f"({placement['npu_share_pct']:.1f}% NPU); by ONNX op: {per_op}; fell back to the CPU: {fallen or 'none'}"
    )


def tuning_line(tuning: dict) -> str:
    line = (
        f"tuning: {tuning['tasks']} kernels, {tuning['reused']} from the tuning database, {tuning['tuned']} tuned "
        f"now ({tuning['trials']} trials, {tuning['seconds']:.0f} s)"
    )
    if tuning["untuned"]:
        line += (
            f", [bold yellow]{tuning['untuned']} untuned[/] (TVM default code: no valid candidate within the budget)"
        )
    return line


def print_validation(report: dict, console: Console | None = None) -> None:
    console = console or make_console()
    console.print(
        f"[bold]vdeploy validate[/] {report['bundle']} (target {report['target']}, {report['backend']}) "
        f"on {report['host']['node']} ({report['host']['machine']})"
    )
    console.print(numerics_line(report["numerics"], report["budgets"]["numerics"]))
    console.print(latency_line(report["latency_ms"], report["budgets"]))
    if "signature" in report:
        from vdeploy.signing import SignatureStatus

        console.print(SignatureStatus(report["signature"]["state"], report["signature"]["key_fingerprint"]).line())
    _print_verdict(report, console)


def _print_verdict(report: dict, console: Console) -> None:
    for violation in report["violations"]:
        console.print(f"[red]violation[/] {violation['message']}")
    for item in report["reason"].get("unverified", []):
        console.print(f"[yellow]unverified[/] {item}")
    verdict = report["verdict"]
    console.print(f"verdict: [{VERDICT_STYLE[verdict]}]{verdict.upper()}[/]")


def coverage_table(coverage: dict) -> Table:
    table = Table(title="operator coverage", title_justify="left")
    for column in ("op", "before", "after", "status"):
        table.add_column(column, justify="right" if column in ("before", "after") else "left")
    before, after = coverage["ops_before"], coverage["ops_after"]
    for op in sorted(coverage["status"], key=lambda o: (-after.get(o, 0), o)):
        status = coverage["status"][op]
        style = {"unsupported": "red", "fallback": "yellow", "unknown": "magenta"}.get(status)
        table.add_row(op, str(before.get(op, 0)), str(after.get(op, 0)), f"[{style}]{status}[/]" if style else status)
    fired = ", ".join(f"{rule} ×{n}" for rule, n in sorted(coverage["rules"].items())) or "none"
    table.caption = f"{sum(before.values())} nodes before legalization, {sum(after.values())} after; rules: {fired}"
    return table


def numerics_line(numerics: dict, tolerance: dict) -> str:
    top1 = numerics["top1_agreement"]
    top1_text = "n/a" if top1 is None else f"{top1:.3f}"
    inputs = numerics.get("inputs", "seeded standard normal")

    def num(key: str, fmt: str) -> str:  # null: the figure was not finite (strict-JSON manifest)
        return "not finite" if numerics[key] is None else format(numerics[key], fmt)

    return (
        f"numerics vs reference ({numerics['samples']} samples, {inputs}): max_abs {num('max_abs', '.3g')}, "
        f"rel_err {num('rel_err', '.3g')} (budget {tolerance['max_rel_err']:g}), "
        f"cosine {num('cosine', '.6f')} (budget {tolerance['min_cosine']:g}), top-1 agreement {top1_text}"
    )


def latency_line(latency: dict | None, budgets: dict) -> str:
    if latency is None:
        return "latency: not measured"
    if latency.get("source") == "estimate":
        return f"latency: {latency['p50']:.2f} ms ESTIMATED by the roofline model (not measured on the device)"
    if latency.get("source") not in (None, "measured"):  # a toolchain's own estimate (rknn-estimate, vela-estimate)
        return f"latency: {latency['p50']:.3f} ms ESTIMATED ({latency['source']}; not measured on the device)"
    budget = budgets["latency_ms"]
    limit = f" (budget {budgets['latency_stat']} <= {budget:g} ms)" if budget else ""
    return (
        f"latency: p50 {latency['p50']:.2f} ms, p90 {latency['p90']:.2f} ms, p99 {latency['p99']:.2f} ms "
        f"over {latency['runs']} runs{limit}"
    )


def coverage_matrix(coverages: dict[str, dict]) -> Table:
    """Ops down, targets across; each cell 'after-count status' (how that target runs the op)."""
    table = Table(title="operator coverage by target (count after legalization, status)", title_justify="left")
    table.add_column("op")
    table.add_column("before", justify="right")
    for name in coverages:
        table.add_column(name)
    ops = sorted({op for cov in coverages.values() for op in cov["status"]})
    for op in ops:
        before = max(cov["ops_before"].get(op, 0) for cov in coverages.values())
        cells = []
        for cov in coverages.values():
            status = cov["status"].get(op)
            style = {
                "unsupported": "red",
                "fallback": "yellow",
                "unknown": "magenta",
                "decomposed": "cyan",
                "fused": "green",
            }.get(status)
            text = "" if status is None else f"{cov['ops_after'].get(op, 0)} {status}"
            cells.append(f"[{style}]{text}[/]" if style and text else text)
        table.add_row(op, str(before) if before else "", *cells)
    table.caption = "; ".join(f"{name}: {_verdict_of(cov)}" for name, cov in coverages.items())
    return table


def _verdict_of(coverage: dict) -> str:
    if coverage["unsupported"]:
        return "unsupported " + ", ".join(coverage["unsupported"])
    unknown = coverage.get("unknown") or []  # ops the target's documents leave open
    return (
        "LEGAL"
        + (f" (on fallback: {', '.join(coverage['fallback'])})" if coverage["fallback"] else "")
        + (f" (unknown on the target: {', '.join(unknown)})" if unknown else "")
    )


def print_summary(outcomes, console: Console | None = None) -> None:
    console = console or make_console()
    table = Table(title="build summary", title_justify="left")
    for column in ("target", "verdict", "latency p50 ms", "rel_err", "size MB", "bundle or error"):
        table.add_column(column)
    for outcome in outcomes:
        if outcome.error:
            table.add_row(outcome.target, "[red]ERROR[/]", "", "", "", outcome.error.one_line())
            continue
        from vdeploy.manifest import measured

        m = outcome.result.manifest
        latency = f"{measured(m, 'latency_ms')['p50']:.2f}" if measured(m, "latency_ms") else "-"
        verdict = m["verdict"]
        table.add_row(
            outcome.target,
            f"[{VERDICT_STYLE[verdict]}]{verdict.upper()}[/]",
            latency,
            f"{m['numerics']['rel_err']:.2g}" if m["numerics"]["rel_err"] is not None else "not finite",
            f"{m['size_mb']:.2f}",
            str(outcome.result.bundle),
        )
    console.print(table)
