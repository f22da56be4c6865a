"""`vdeploy keygen PATH` and the signing options of build/validate (bodies in deploy/signing.py).

keygen PATH -> PATH (ed25519 private key, PEM, 0600) + PATH.pub · build --sign PATH · validate --verify PATH.pub
"""

from __future__ import annotations

from pathlib import Path

import typer

from vdeploy.cli_common import guarded

SIGN_KEY = typer.Option(
    None, "--sign", help="Sign the bundle with this ed25519 private key (PEM; `vdeploy keygen`): signature.json."
)
VERIFY_KEY = typer.Option(
    None, "--verify", help="Require a signature by this ed25519 public key (PEM) over every file of the bundle."
)


def keygen(
    path: Path = typer.Argument(..., help="Where to write the private key; the public key goes to PATH.pub."),
) -> None:
    """Make an ed25519 key pair for `build --sign` / `validate --verify`."""

    def work():
        from vdeploy.signing import fingerprint, keygen, load_public_key

        private, public = keygen(path)
        typer.echo(f"private key: {private} (keep it secret: it signs releases)")
        typer.echo(f"public key:  {public} (give it to whoever runs `vdeploy validate --verify`)")
        typer.echo(f"fingerprint: {fingerprint(load_public_key(public))}")
        return 0

    raise typer.Exit(guarded(work, False))
