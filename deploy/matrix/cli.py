"""The `vdeploy matrix` command body (deploy/cli.py only registers it)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import typer

from vdeploy.errors import VdeployError


def matrix(
    release_file: Path = typer.Argument(..., help="The release file (YAML): models, targets, precisions, budgets."),
    out: Path = typer.Option(None, "--out", "-o", help="Bundles root (default: the release file's out:)."),
    ray_address: str = typer.Option(
        None,
        "--ray-address",
        help="An existing Ray cluster: auto | HOST:PORT | ray://HOST:10001 (default: an embedded Ray on this machine).",
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild every cell, also the unchanged ones."),
    as_json: bool = typer.Option(False, "--json", help="Print release.json on stdout, nothing else."),
) -> None:
    """Build a release matrix (models × targets × precisions) as Ray tasks; exit 1 if any build errored, else 3
    if any failed a gate."""
    from vdeploy.cli_common import guarded as _guarded

    def work():
        from vdeploy.matrix.release import load_release
        from vdeploy.matrix.report import Display, summary_table, write_outputs
        from vdeploy.matrix.runner import run_release
        from vdeploy.report import make_console

        release, base = load_release(release_file)
        try:
            with Display(quiet=as_json) as display, _stdout_on_stderr():
                result = run_release(
                    release,
                    base,
                    out=out.resolve() if out else None,
                    ray_address=ray_address,
                    force=force,
                    display=display,
                )
        except KeyboardInterrupt:
            raise Interrupted(
                "the cells that finished are kept (bundles and resume state); the others were stopped",
                "run the same command again to build only what is missing",
            ) from None
        data = write_outputs(result)
        if as_json:
            typer.echo(json.dumps(data, indent=2, default=str))
        else:
            console = make_console()
            console.print(summary_table(data))
            console.print(f"release.json, release.html: {result.out}")
        return result.exit_code

    raise typer.Exit(_guarded(work, as_json))


class Interrupted(VdeployError):
    kind = "interrupted"


@contextlib.contextmanager
def _stdout_on_stderr():
    """While Ray runs, whatever writes to stdout (Ray's own `(raylet) A worker died ...` notices) goes to stderr:
    stdout carries only the summary, or the JSON with --json."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
