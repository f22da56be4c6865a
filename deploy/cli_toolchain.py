"""`vdeploy toolchain install|list`: thin calls into vdeploy.backends.toolchains."""

from __future__ import annotations

import json

import typer

from vdeploy.cli_common import Progress, guarded

toolchain_app = typer.Typer(no_args_is_help=True, help="Vendor toolchains (rknn-toolkit2, ...) in their own venvs.")


@toolchain_app.command("install")
def toolchain_install(name: str = typer.Argument(..., help="Toolchain name (see `vdeploy toolchain list`).")) -> None:
    """Create the toolchain's pinned venv under the vdeploy cache (nothing if it is already there)."""

    def work():
        from vdeploy.backends import toolchains

        with Progress(False) as progress:
            venv = toolchains.install(name, progress)
        typer.echo(str(venv))
        return 0

    raise typer.Exit(guarded(work, False))


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

    raise typer.Exit(guarded(work, as_json))
