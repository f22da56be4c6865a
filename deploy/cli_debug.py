"""`vdeploy debug`: the build's plan with a numerics check after every stage and rule family."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vdeploy.cli_common import (
    ARCH,
    CALIB,
    EVAL_DATA,
    INPUT_SHAPE,
    INPUT_SPEC,
    INT8_SENSITIVE,
    MEAN,
    MIN_COSINE,
    PRECISION,
    STD,
    TARGETS_FILE,
    TRUST_PICKLE,
    WEIGHTS,
    Progress,
    floats_arg,
    guarded,
    model_arg,
    sensitive_arg,
    shape_arg,
)


def debug(
    model: str | None = typer.Argument(None, help="Model file or timm:NAME, as for build."),
    target: str = typer.Option(..., "--target", "-t", help="Target name or alias (one)."),
    precision: str | None = PRECISION,
    input_shape: str | None = INPUT_SHAPE,
    trust_pickle: bool = TRUST_PICKLE,
    as_json: bool = typer.Option(False, "--json", help="Print the bisect report as JSON on stdout."),
    calib: Path | None = CALIB,
    mean: str | None = MEAN,
    std: str | None = STD,
    int8_sensitive: str = INT8_SENSITIVE,
    eval_data: Path | None = EVAL_DATA,
    min_cosine: float | None = MIN_COSINE,
    tune_trials: int = typer.Option(
        0, min=0, help="TVM: tuning budget (default 0: cached schedules only; schedules do not change numerics)."
    ),
    targets_file: Path | None = TARGETS_FILE,
    input_spec: list[str] = INPUT_SPEC,
    arch: str | None = ARCH,
    weights: Path | None = WEIGHTS,
) -> None:
    """Run the target's build plan with a numerics check after every stage and rule family: the first pass, then
    the first node, where numerics leave the target's tolerance; exit 3 if one does."""

    def work():
        from vdeploy import api

        with Progress(as_json) as progress:
            report = api.debug(
                model_arg(model, arch, weights),
                target,
                input_specs=tuple(input_spec),
                arch=arch,
                precision=precision,
                trust_pickle=trust_pickle,
                catalog=targets_file,
                input_shape=shape_arg(input_shape),
                calib=calib,
                mean=floats_arg(mean, "--mean"),
                std=floats_arg(std, "--std"),
                int8_sensitive=sensitive_arg(int8_sensitive),
                eval_data=eval_data,
                min_cosine=min_cosine,
                tune_trials=tune_trials,
                progress=progress,
            )
        if as_json:
            typer.echo(json.dumps(report.to_dict(), indent=2))
            return report.exit_code
        from rich.table import Table

        from vdeploy.report import make_console

        table = Table(
            title=f"numerics by stage: {report.target} ({report.precision}) vs the reference", title_justify="left"
        )
        for column in ("stage", "rel_err", "cosine", "ok", "rules / note"):
            table.add_column(column, justify="right" if column in ("rel_err", "cosine") else "left")
        for stage in report.stages:
            table.add_row(
                stage.name,
                f"{stage.rel_err:.2e}",
                f"{stage.cosine:.6f}",
                "ok" if stage.ok else "[red]OUT[/]",
                stage.detail,
            )
        console = make_console()
        console.print(table)
        console.print(f"first bad stage: {report.first_bad_stage or 'none (every stage within tolerance)'}")
        blame = report.first_bad_node
        if blame:
            made_by = f", made by rule {blame.node.rule}" if blame.node.rule else ""
            console.print(
                f"first bad node: {blame.node.name} ({blame.node.op_type}{made_by}): value {blame.value} "
                f"rel_err {blame.rel_err:.2e}, cosine {blame.cosine:.6f}"
                + ("" if blame.beyond_tolerance else " (worst value; none alone leaves tolerance)")
            )
            near = blame.nearest_rule_node
            if near and near.name != blame.node.name:
                console.print(f"nearest rewritten node feeding it: {near.name} ({near.op_type}, rule {near.rule})")
        if report.layers is not None:
            _print_layers(console, report.layers)
        return report.exit_code

    raise typer.Exit(guarded(work, as_json))


def _print_layers(console, layers) -> None:
    """The vendor toolchain's per-layer numerics (rknn accuracy_analysis): where the error explodes."""
    from vdeploy.layer_analysis import describe

    console.print(
        f"per-layer numerics from {layers.source}: {len(layers.rows)} layers, sample {layers.sample}, "
        f"INT8 hybrid level {layers.hybrid_level}"
    )
    console.print(f"  first layer below cosine {layers.gate_cosine:g}: {describe(layers.first_below_gate)}")
    drop = describe(layers.largest_drop)
    if layers.largest_drop_from is not None:
        drop += f" (from {layers.largest_drop_from:.5f})"
    console.print(f"  largest accumulated drop: {drop}")
    console.print(f"  worst layer on its own: {describe(layers.worst_single)}")
    for note in layers.notes:
        console.print(f"  note: {note}")
