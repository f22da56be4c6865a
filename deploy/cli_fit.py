"""CLI bodies for `vdeploy build --fit / --plan` and `vdeploy compare` (parsing in cli.py / here, work in vdeploy.fit).

build --fit: search -> the chosen plan's bundle, the Pareto table, the misses (exit 0 fits, 3 nearest plan written)
build --plan plan.json: replay -> the same artifact bytes · compare: build each model, rank for the scene
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vdeploy.cli_common import (
    EVAL_DATA,
    INPUT_SHAPE,
    PRECISION,
    TARGETS_FILE,
    TRUST_PICKLE,
    Progress,
    guarded,
    shape_arg,
)
from vdeploy.errors import UsageError


def fit_or_plan(
    request, *, fit: bool, budget_s: float, allow_resize: bool, levers: str | None, plan: Path | None, as_json: bool
) -> int:
    """The work of `vdeploy build --fit` / `--plan` (inside cli.build's guard)."""
    from vdeploy.fit.output import fit_build, plan_build

    if fit and plan is not None:
        raise UsageError(
            "--fit and --plan do not go together", "--fit searches and writes plan.json; --plan replays one"
        )
    if (allow_resize or levers) and not fit:
        raise UsageError("--fit-allow-resize and --fit-levers need --fit", "add --fit")
    with Progress(as_json) as progress:
        if fit:
            names = tuple(n.strip() for n in levers.split(",") if n.strip()) if levers else None
            result = fit_build(request, progress, budget_s=budget_s, allow_resize=allow_resize, levers=names)
        else:
            result = plan_build(request, plan, progress)
    section = result.manifest["fit"]
    if as_json:
        typer.echo(json.dumps(result.manifest, indent=2, allow_nan=False))
    else:
        from vdeploy.fit.report import print_fit
        from vdeploy.report import make_console, print_build

        console = make_console()
        print_build(result.manifest, result.bundle, console)
        if "trials" in section:
            print_fit(section, console)
        console.print(f"plan: {result.bundle / 'plan.json'} (replay: vdeploy build MODEL --target ... --plan FILE)")
    if fit and not section["fits"]:
        return 3
    return result.exit_code


def compare(
    models: list[str] = typer.Argument(..., help="Model files or timm:NAME, two or more."),
    target: str = typer.Option(..., "--target", "-t", help="One target name or alias."),
    scene: str | None = typer.Option(None, help="Scene preset from scenes.yaml: realtime, medical, industrial, video."),
    out: Path = typer.Option(Path("out/compare"), "--out", "-o", help="Bundles go to OUT/<model>-<target>/."),
    precision: str | None = PRECISION,
    input_shape: str | None = INPUT_SHAPE,
    eval_data: Path | None = EVAL_DATA,
    iters: int = typer.Option(30, min=1, help="Timed runs per model."),
    trust_pickle: bool = TRUST_PICKLE,
    as_json: bool = typer.Option(False, "--json", help="Print the ranking as JSON on stdout, nothing else."),
    targets_file: Path | None = TARGETS_FILE,
    scenes_file: Path | None = typer.Option(None, "--scenes-file", help="Scene presets to use (default: scenes.yaml)."),
) -> None:
    """Build each model for TARGET and rank them: fits the scene's budgets first, then accuracy, then latency."""

    def work():
        from vdeploy.api import request_for
        from vdeploy.fit.compare import compare_models, to_rows
        from vdeploy.fit.scenes import get_scene

        if len(models) < 2:
            raise UsageError("compare needs two or more models", "vdeploy compare --target T a.pt2 b.pt2 ...")
        chosen_scene = get_scene(scene, scenes_file) if scene else None
        request = request_for(
            models[0],
            [target],
            out=out,
            precision=precision,
            input_shape=shape_arg(input_shape),
            eval_data=eval_data,
            iters=iters,
            trust_pickle=trust_pickle,
            catalog=targets_file,
        )
        with Progress(as_json) as progress:
            ranked = compare_models(list(models), request, chosen_scene, progress)
        rows = to_rows(ranked)
        if as_json:
            typer.echo(json.dumps({"target": target, "scene": scene, "ranking": rows}, indent=2, allow_nan=False))
        else:
            print_ranking(rows, target, scene, chosen_scene)
        return 0 if any(r["fits"] for r in rows) else 3

    raise typer.Exit(guarded(work, as_json))


def print_ranking(rows: list[dict], target: str, scene: str | None, chosen_scene) -> None:
    from rich.table import Table

    from vdeploy.report import make_console

    title = f"compare on {target}" + (f", scene {scene}: {chosen_scene.description}" if scene else "")
    table = Table(title=title, title_justify="left")
    for column in ("#", "model", "fits", "latency ms", "source", "power W", "size MB", "1 - worst cos", "misses"):
        table.add_column(column)
    for r in rows:
        latency = r["clip_latency_ms"] or r["latency_ms"]
        misses = "; ".join(_miss(k, v) for k, v in r["misses"].items())
        misses += "".join(f"; cannot check {k}" for k in r["unmeasured"])
        table.add_row(
            str(r["rank"]),
            r["model"] + (f" ({r['architecture']})" if r["architecture"] else ""),
            "error" if r["error"] else ("yes" if r["fits"] else "no"),
            "-" if latency is None else f"{latency:.2f}" + (" /clip" if r["clip_latency_ms"] else ""),
            r["latency_source"] or "-",
            "-" if r["power_w"] is None else f"{r['power_w']:.2f} ({r['power_source']})",
            "-" if r["size_mb"] is None else f"{r['size_mb']:.2f}",
            "-" if r["worst_cosine"] is None else f"{max(0.0, 1 - r['worst_cosine']):.1e}",
            r["error"] or misses.strip("; ") or "-",
        )
    console = make_console()
    console.print(table)
    if chosen_scene is not None:
        console.print(f"scene {scene}: {'; '.join(chosen_scene.sources)}", highlight=False)


def _miss(name: str, miss: dict) -> str:
    if "over_pct" in miss:
        return f"{name} {miss['value']:g} > {miss['limit']:g} (+{miss['over_pct']:g}%, {miss['source']})"
    return f"{name}: {miss['value']} (wants {miss['limit']})"
