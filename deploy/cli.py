"""The `vdeploy` command line: parsing and printing only; the work lives in pipeline.py.

Exit codes: 0 built and every budget holds (or verdict unverified) · 1 error · 2 usage · 3 a budget or gate failed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import typer

from vdeploy.errors import VdeployError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Compile vision models for edge targets, validate them against budgets, write release bundles.",
)

TARGETS_FILE = typer.Option(None, "--targets-file", envvar="VDEPLOY_TARGETS", help="Target catalogue to use.")
INPUT_SHAPE = typer.Option(None, help="Input shape, e.g. 1,3,224,224.")
TRUST_PICKLE = typer.Option(False, "--trust-pickle", help="Allow pickled nn.Module files (runs their code).")
PRECISION = typer.Option(None, help="fp32 | fp16 | bf16 | int8 (default: the target's).")
CALIB = typer.Option(None, help="INT8 calibration: a folder of images, a .npy or a .npz.")
MEAN = typer.Option(None, help="Image mean per channel for --calib folders, e.g. 0.485,0.456,0.406.")
STD = typer.Option(None, help="Image std per channel for --calib folders.")
INT8_SENSITIVE = typer.Option(
    "auto",
    help="INT8 layers kept float: auto (the fewest that make the numerics gate "
    "hold, measured) or N (the N most sensitive), 0: none.",
)
EVAL_DATA = typer.Option(None, help="Labelled .npz (inputs, labels): top-1 of artifact vs reference.")
MIN_COSINE = typer.Option(None, help="Override the numerics gate: minimum output cosine.")
INPUT_SPEC = typer.Option(
    [],
    "--input-spec",
    help="How seeded validation inputs are drawn, per input: NAME:normal, "
    "NAME:uniform:LO:HI, NAME:positive, NAME:ids:VOCAB, NAME:mask (repeatable).",
)
ARCH = typer.Option(
    None,
    "--arch",
    help="Build this architecture and load MODEL (or --weights) as its state dict: "
    "timm:NAME or package.module:factory. Imports and runs that code: use only code you trust.",
)
WEIGHTS = typer.Option(None, "--weights", help="With --arch: a state dict or checkpoint (loaded weights_only).")


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
) -> None:
    """Build, validate and bundle MODEL for one or more targets."""

    def work():
        from vdeploy.api import request_for
        from vdeploy.pipeline import build as run_build
        from vdeploy.pipeline import overall_exit_code

        request = request_for(
            _model_arg(model, arch, weights),
            target,
            out=out,
            input_specs=tuple(input_spec),
            arch=arch,
            precision=precision,
            input_shape=_shape(input_shape),
            max_latency_ms=max_latency_ms,
            max_power_w=max_power_w,
            trust_pickle=trust_pickle,
            catalog=targets_file,
            iters=iters,
            calib=calib,
            mean=_floats(mean, "--mean"),
            std=_floats(std, "--std"),
            int8_sensitive=_sensitive(int8_sensitive),
            min_cosine=min_cosine,
            min_top1_agreement=min_top1_agreement,
            eval_data=eval_data,
            max_top1_drop=max_top1_drop,
            tune_trials=tune_trials,
            tuning_db=tuple(tuning_db),
        )
        with _Progress(as_json) as progress:
            outcomes = run_build(request, progress)
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

    raise typer.Exit(_guarded(work, as_json))


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

        with _Progress(as_json) as progress:
            results = api.coverage(
                _model_arg(model, arch, weights),
                target,
                trust_pickle=trust_pickle,
                catalog=targets_file,
                input_specs=tuple(input_spec),
                arch=arch,
                input_shape=_shape(input_shape),
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

    raise typer.Exit(_guarded(work, as_json))


@app.command()
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

        with _Progress(as_json) as progress:
            report = api.debug(
                _model_arg(model, arch, weights),
                target,
                input_specs=tuple(input_spec),
                arch=arch,
                precision=precision,
                trust_pickle=trust_pickle,
                catalog=targets_file,
                input_shape=_shape(input_shape),
                calib=calib,
                mean=_floats(mean, "--mean"),
                std=_floats(std, "--std"),
                int8_sensitive=_sensitive(int8_sensitive),
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
        return report.exit_code

    raise typer.Exit(_guarded(work, as_json))


@app.command()
def validate(
    bundle: Path = typer.Argument(..., help="A bundle directory written by `vdeploy build`."),
    as_json: bool = typer.Option(False, "--json", help="Print the validation report as JSON on stdout."),
    iters: int = typer.Option(50, min=1, help="Timed runs for the latency measurement."),
) -> None:
    """Re-run a bundle's reference I/O, latency and budgets on this machine (e.g. on the device)."""

    def work():
        from vdeploy import api

        report = api.validate(bundle, iters=iters).report
        if as_json:
            typer.echo(json.dumps(report, indent=2, allow_nan=False))
        else:
            from vdeploy.report import print_validation

            print_validation(report)
        return 3 if report["verdict"] == "fail" else 0

    raise typer.Exit(_guarded(work, as_json))


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

    raise typer.Exit(_guarded(work, as_json))


def _model_arg(model: str | None, arch: str | None, weights: Path | None) -> str:
    """MODEL, or with --arch the weights file (MODEL or --weights, not both)."""
    if arch is None:
        if weights is not None:
            raise typer.BadParameter(
                "--weights needs --arch (the architecture to load them into)", param_hint="--weights"
            )
        if model is None:
            raise typer.BadParameter("give a model file (or timm:NAME, or --arch with --weights)", param_hint="MODEL")
        return model
    if (model is None) == (weights is None):
        raise typer.BadParameter(
            "with --arch give the weights once: as MODEL or as --weights FILE", param_hint="--arch"
        )
    return str(weights) if weights is not None else model


# --- hook (matrix): `vdeploy matrix release.yaml`; the body lives in vdeploy/matrix/cli.py ---
def _register_matrix() -> None:
    from vdeploy.matrix.cli import matrix

    app.command(name="matrix")(matrix)


_register_matrix()


# --- hook (rknn branch): `vdeploy toolchain install|list`, thin calls into vdeploy.backends.toolchains ---
toolchain_app = typer.Typer(no_args_is_help=True, help="Vendor toolchains (rknn-toolkit2, ...) in their own venvs.")
app.add_typer(toolchain_app, name="toolchain")


@toolchain_app.command("install")
def toolchain_install(name: str = typer.Argument(..., help="Toolchain name (see `vdeploy toolchain list`).")) -> None:
    """Create the toolchain's pinned venv under the vdeploy cache (nothing if it is already there)."""

    def work():
        from vdeploy.backends import toolchains

        with _Progress(False) as progress:
            venv = toolchains.install(name, progress)
        typer.echo(str(venv))
        return 0

    raise typer.Exit(_guarded(work, False))


@toolchain_app.command("list")
def toolchain_list(as_json: bool = typer.Option(False, "--json", help="Print the list as JSON.")) -> None:
    """Known toolchains, whether each is installed, where, and the versions it holds."""

    def work():
        from vdeploy.backends import toolchains

        rows = toolchains.listing()
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return 0
        for row in rows:
            state = "installed" if row["installed"] else "not installed"
            versions = ", ".join(f"{k} {v}" for k, v in row["versions"].items())
            typer.echo(f"{row['name']}: {state} {row['venv']}" + (f" ({versions})" if versions else ""))
        return 0

    raise typer.Exit(_guarded(work, as_json))


# --- end hook ---


def _shape(text: str | None):
    from vdeploy.reference import parse_shape

    return parse_shape(text) if text else None


def _sensitive(text: str) -> int | str:
    """--int8-sensitive: "auto" or a layer count (int8 hook)."""
    from vdeploy.int8 import parse_sensitive

    try:
        return parse_sensitive(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--int8-sensitive") from None


def _floats(text: str | None, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of numbers", param_hint=option) from None


def _guarded(work, as_json: bool) -> int:
    """Run a command body; a VdeployError or an unexpected exception becomes one line and exit 1."""
    try:
        return work()
    except typer.BadParameter:  # a usage error found while reading options: click prints it, exit 2
        raise
    except VdeployError as exc:
        _fail(exc.one_line(), exc.as_dict(), as_json)
    except KeyboardInterrupt:
        _fail("interrupted: nothing was written", {"error": "interrupted"}, as_json)
    except Exception as exc:  # the last line of defence: never a traceback unless asked for
        if os.environ.get("VDEPLOY_DEBUG"):
            raise
        message = f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        _fail(
            f"{message} — rerun with VDEPLOY_DEBUG=1 for the traceback and report it",
            {"error": "internal", "message": message},
            as_json,
        )
    return 1


def _fail(line: str, payload: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(payload))
    typer.echo(line, err=True)


class _Progress:
    """Stage lines on stderr: a spinner and ticked stages with timings on a terminal, plain lines otherwise."""

    def __init__(self, quiet: bool):
        self.quiet, self.status = quiet, None
        self.current: tuple[str, float] | None = None
        if not quiet and sys.stderr.isatty():
            from rich.console import Console

            self.console = Console(stderr=True)
            self.status = self.console.status("starting")

    def __enter__(self):
        if self.status:
            self.status.start()
        return self

    def __call__(self, message: str) -> None:
        if self.quiet:
            return
        if self.status is None:
            print(f"vdeploy: {message}", file=sys.stderr, flush=True)
            return
        self._tick()
        self.current = (message, time.perf_counter())
        self.status.update(message)

    def _tick(self) -> None:
        if self.current:
            message, started = self.current
            self.console.print(f"[green]✓[/] {message} [dim]({time.perf_counter() - started:.1f} s)[/]")

    def __exit__(self, *exc) -> None:
        if self.status:
            self.status.stop()
            if exc[0] is None:
                self._tick()


def main() -> None:
    app()
