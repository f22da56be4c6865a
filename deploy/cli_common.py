"""What every `vdeploy` command shares: option declarations, argument parsing, the error guard, progress lines."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import typer

from vdeploy.errors import VdeployError

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


def model_arg(model: str | None, arch: str | None, weights: Path | None) -> str:
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


def shape_arg(text: str | None):
    from vdeploy.reference import parse_shape

    return parse_shape(text) if text else None


def sensitive_arg(text: str) -> int | str:
    """--int8-sensitive: "auto" or a layer count (int8 hook)."""
    from vdeploy.int8 import parse_sensitive

    try:
        return parse_sensitive(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--int8-sensitive") from None


def floats_arg(text: str | None, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a comma-separated list of numbers", param_hint=option) from None


def guarded(work, as_json: bool) -> int:
    """Run a command body; a VdeployError, an interrupt (SIGINT, SIGTERM, SIGHUP) or an unexpected exception
    becomes one line and exit 1."""
    from vdeploy.interrupts import handled

    try:
        with handled():
            return work()
    except typer.BadParameter:  # a usage error found while reading options: click prints it, exit 2
        raise
    except VdeployError as exc:
        fail_line(exc.one_line(), exc.as_dict(), as_json)
    except KeyboardInterrupt as exc:
        name = getattr(getattr(exc, "signal", None), "name", "SIGINT")
        fail_line(
            f"interrupted by {name}: stopped, no half-written bundle or temporary file left behind",
            {"error": "interrupted", "signal": name},
            as_json,
        )
    except Exception as exc:  # the last line of defence: never a traceback unless asked for
        if os.environ.get("VDEPLOY_DEBUG"):
            raise
        from vdeploy.host_errors import host_error

        mapped = host_error(exc) if isinstance(exc, OSError) else None  # a full disk is the host's, not a bug
        if mapped is not None:
            fail_line(mapped.one_line(), mapped.as_dict(), as_json)
            return 1
        message = f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        fail_line(
            f"{message} — rerun with VDEPLOY_DEBUG=1 for the traceback and report it",
            {"error": "internal", "message": message},
            as_json,
        )
    return 1


def fail_line(line: str, payload: dict, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(payload))
    typer.echo(line, err=True)


class Progress:
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
