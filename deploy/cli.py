"""The `vdeploy` command line: parsing and printing only; the work lives in pipeline.py.

Exit codes: 0 built and every budget holds (or verdict unverified) · 1 error · 2 usage · 3 a budget or gate failed.
"""

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
from vdeploy.cli_sign import SIGN_KEY, VERIFY_KEY

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Compile vision models for edge targets, validate them against budgets, write release bundles.",
)


@app.command()
def build(
    model: str | None = typer.Argument(
        None, help="Model file (.pt2, TorchScript, ONNX, pickle with --trust-pickle), timm:NAME, or --arch weights."
    ),
    target: list[str] = typer.Option(..., "--target", "-t", help="Target name or alias; repeat for several, or 'all'."),
    out: Path = typer.Option(Path("out"), "--out", "-o", help="Bundles go to OUT/<model>-<target>/."),
    precision: str | None = PRECISION,
    input_shape: str | None = INPUT_SHAPE,
    max_latency_ms: float | None = typer.Option(None, help="Override the target's latency budget."),
    max_power_w: float | None = typer.Option(None, help="Override the target's power budget."),
    trust_pickle: bool = TRUST_PICKLE,
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON on stdout, nothing else."),
    iters: int = typer.Option(50, min=1, help="Timed runs for the latency measurement."),
    calib: Path | None = CALIB,
    mean: str | None = MEAN,
    std: str | None = STD,
    int8_sensitive: str = INT8_SENSITIVE,
    min_cosine: float | None = MIN_COSINE,
    min_top1_agreement: float | None = typer.Option(None, help="Override the gate: minimum top-1 agreement."),
    eval_data: Path | None = EVAL_DATA,
    max_top1_drop: float | None = typer.Option(None, help="Gate: maximum top-1 drop in points (needs --eval-data)."),
    tune_trials: int | None = typer.Option(None, min=0, help="TVM: tuning budget for kernels without a cached record."),
    tuning_db: list[Path] = typer.Option(
        [], help="TVM: reuse the tuning records of a bundle (or its tuning/); repeatable."
    ),
    targets_file: Path | None = TARGETS_FILE,
    input_spec: list[str] = INPUT_SPEC,
    arch: str | None = ARCH,
    weights: Path | None = WEIGHTS,
    sign: Path | None = SIGN_KEY,
    no_cache: bool = typer.Option(False, "--no-cache", help="Rebuild even when the build cache holds this build."),
    runtime: str | None = typer.Option(None, help="One of the target's runtimes (default: its own, or the faster)."),
    fit: bool = typer.Option(
        False,
        "--fit",
        help="Search the levers for the plan that meets every budget at the least accuracy loss (docs/fit.md).",
    ),
    fit_budget_s: float = typer.Option(300.0, min=1, help="--fit: time budget of the search, seconds."),
    fit_allow_resize: bool = typer.Option(False, help="--fit: the input size may shrink (changes the input)."),
    fit_levers: str | None = typer.Option(None, help="--fit: levers to search, e.g. runtime,precision (default: all)."),
    plan_file: Path | None = typer.Option(None, "--plan", help="Replay a plan.json written by --fit."),
    prune_heads: str | None = typer.Option(
        None, help="Remove attention heads: a count (least important first, measured) or a JSON plan file."
    ),
) -> None:
    """Build, validate and bundle MODEL for one or more targets."""

    def work():
        from vdeploy.api import request_for
        from vdeploy.pipeline import build as run_build
        from vdeploy.pipeline import overall_exit_code

        request = request_for(
            model_arg(model, arch, weights),
            target,
            out=out,
            input_specs=tuple(input_spec),
            arch=arch,
            precision=precision,
            input_shape=shape_arg(input_shape),
            max_latency_ms=max_latency_ms,
            max_power_w=max_power_w,
            trust_pickle=trust_pickle,
            catalog=targets_file,
            iters=iters,
            calib=calib,
            mean=floats_arg(mean, "--mean"),
            std=floats_arg(std, "--std"),
            int8_sensitive=sensitive_arg(int8_sensitive),
            min_cosine=min_cosine,
            min_top1_agreement=min_top1_agreement,
            eval_data=eval_data,
            max_top1_drop=max_top1_drop,
            tune_trials=tune_trials,
            tuning_db=tuple(tuning_db),
            sign_key=sign,
            runtime=runtime,
            prune_heads=prune_heads,
        )
        if fit or plan_file is not None or fit_allow_resize or fit_levers:
            from vdeploy.cli_fit import fit_or_plan

            return fit_or_plan(
                request,
                fit=fit,
                budget_s=fit_budget_s,
                allow_resize=fit_allow_resize,
                levers=fit_levers,
                plan=plan_file,
                as_json=as_json,
            )
        with Progress(as_json) as progress:
            outcomes = run_build(request, progress, use_cache=not no_cache)
        if as_json:
            payload = [o.result.manifest if o.result else {"target": o.target, **o.error.as_dict()} for o in outcomes]
            typer.echo(json.dumps(payload[0] if len(outcomes) == 1 else payload, indent=2, allow_nan=False))
        else:
            from vdeploy.report import print_build, print_summary

            for outcome in outcomes:
                if outcome.result:
                    print_build(outcome.result.manifest, outcome.result.bundle)
            if len(outcomes) > 1:
                print_summary(outcomes)
        for outcome in outcomes:
            if outcome.error and len(outcomes) > 1:
                typer.echo(f"{outcome.target}: {outcome.error.one_line()}", err=True)
        return overall_exit_code(outcomes)

    raise typer.Exit(guarded(work, as_json))


@app.command()
def coverage(
    model: str | None = typer.Argument(None, help="Model file or timm:NAME, as for build."),
    target: list[str] = typer.Option(..., "--target", "-t", help="Target name or alias; repeat, or 'all'."),
    input_shape: str | None = INPUT_SHAPE,
    trust_pickle: bool = TRUST_PICKLE,
    as_json: bool = typer.Option(False, "--json", help="Print the coverage as JSON on stdout."),
    targets_file: Path | None = TARGETS_FILE,
    input_spec: list[str] = INPUT_SPEC,
    arch: str | None = ARCH,
    weights: Path | None = WEIGHTS,
) -> None:
    """Operator table before/after legalization per target; exit 1 if any target is left with unsupported ops."""

    def work():
        from vdeploy import api

        with Progress(as_json) as progress:
            results = api.coverage(
                model_arg(model, arch, weights),
                target,
                trust_pickle=trust_pickle,
                catalog=targets_file,
                input_specs=tuple(input_spec),
                arch=arch,
                input_shape=shape_arg(input_shape),
                progress=progress,
            )
        if as_json:
            typer.echo(json.dumps({name: cov.to_manifest() for name, cov in results.items()}, indent=2))
        else:
            from vdeploy.report import coverage_matrix, coverage_table, make_console

            console = make_console()
            if len(results) == 1:
                name, cov = next(iter(results.items()))
                console.print(f"[bold]{name}[/]")
                console.print(coverage_table(cov.to_manifest()))
            else:
                console.print(coverage_matrix({name: cov.to_manifest() for name, cov in results.items()}))
        blocked = [name for name, cov in results.items() if cov.unsupported]
        for name in blocked:
            typer.echo(f"coverage: {name} cannot run {', '.join(results[name].unsupported)}", err=True)
        return 1 if blocked else 0

    raise typer.Exit(guarded(work, as_json))


@app.command()
def validate(
    bundle: Path = typer.Argument(..., help="A bundle directory written by `vdeploy build`."),
    as_json: bool = typer.Option(False, "--json", help="Print the validation report as JSON on stdout."),
    iters: int = typer.Option(50, min=1, help="Timed runs for the latency measurement."),
    verify: Path | None = VERIFY_KEY,
) -> None:
    """Re-run a bundle's reference I/O, latency and budgets on this machine (e.g. on the device)."""

    def work():
        from vdeploy import api

        report = api.validate(bundle, iters=iters, verify_key=verify).report
        if as_json:
            typer.echo(json.dumps(report, indent=2, allow_nan=False))
        else:
            from vdeploy.report import print_validation

            print_validation(report)
        return 3 if report["verdict"] == "fail" else 0

    raise typer.Exit(guarded(work, as_json))


@app.command()
def targets(
    as_json: bool = typer.Option(False, "--json", help="Print the catalogue as JSON."),
    targets_file: Path | None = TARGETS_FILE,
) -> None:
    """List the target catalogue."""

    def work():
        from vdeploy import api
        from vdeploy.targets import load_catalog

        catalog = load_catalog(targets_file)
        rows = [
            {
                "name": t.name,
                "aliases": list(t.aliases),
                "backend": t.backend,
                "op_profile": t.op_profile,
                "op_count": len(t.ops),
                "ops": list(t.ops),
                "capabilities": list(t.capabilities),
                "unknown_ops": list(t.unknown_ops),
                "precisions": list(t.precisions),
                "budgets": t.budgets,
                "description": t.description,
            }
            for t in api.targets(catalog.path)
        ]
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return 0
        from rich.table import Table

        from vdeploy.report import make_console

        table = Table(title=f"targets ({catalog.path})", title_justify="left")
        for column in ("target", "aliases", "backend", "op profile (ops)", "precisions", "latency budget"):
            table.add_column(column)
        for row in rows:
            budget = row["budgets"]["latency_ms"]
            table.add_row(
                row["name"],
                ", ".join(row["aliases"]),
                row["backend"],
                f"{row['op_profile']} ({row['op_count']})",
                ", ".join(row["precisions"]),
                f"{row['budgets']['latency_stat']} <= {budget:g} ms" if budget else "-",
            )
        make_console().print(table)
        return 0

    raise typer.Exit(guarded(work, as_json))


# Commands whose bodies live in their own modules, registered here explicitly.
def _register() -> None:
    from vdeploy.cli_debug import debug
    from vdeploy.cli_fit import compare
    from vdeploy.cli_sign import keygen
    from vdeploy.cli_toolchain import toolchain_app
    from vdeploy.matrix.cli import matrix

    app.command()(debug)
    app.command()(compare)
    app.command(name="matrix")(matrix)
    app.command()(keygen)
    app.add_typer(toolchain_app, name="toolchain")


_register()


def main() -> None:
    app()
