"""Bundle signing with an ed25519 key (the `cryptography` package): who released this bundle, and that nothing in
it changed since — the manifest's budgets and tolerances, the artifact, report.html and any other file.

sign:   every regular file under the bundle but signature.json -> [{path, sha256, bytes}] sorted -> canonical JSON
        statement (schema, algorithm, key fingerprint, files) -> ed25519 over CONTEXT + statement -> signature.json
verify: signature.json -> embedded key == the trusted key (--verify KEY.pub) -> signature over the statement ->
        every file on disk listed with its sha256, none missing, none added -> SignatureStatus
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from vdeploy import strict_json
from vdeploy.bundle import MANIFEST
from vdeploy.errors import VdeployError
from vdeploy.load import sha256_file

SIGNATURE = "signature.json"
SCHEMA = "vdeploy.signature/1"
ALGORITHM = "ed25519"
CONTEXT = b"vdeploy bundle signature v1\n"  # domain separation: a signature made for anything else never verifies
PASSPHRASE_ENV = "VDEPLOY_SIGN_PASSPHRASE"  # for an encrypted private key (openssl genpkey ... -aes256)


class SignatureError(VdeployError):
    kind = "signature"


@dataclass(frozen=True)
class SignatureStatus:
    state: str  # "unsigned" | "intact" (signed, files match, key not checked) | "verified" (by the trusted key)
    fingerprint: str | None = None

    def line(self) -> str:
        if self.state == "unsigned":
            return "signature: unsigned (build with --sign KEY to sign a bundle)"
        if self.state == "intact":
            return (
                f"signature: signed by key {self.fingerprint}, files intact; the key itself was not checked "
                "(pass --verify KEY.pub to trust it)"
            )
        return f"signature: verified, key {self.fingerprint}"

    def to_report(self) -> dict:
        return {"state": self.state, "key_fingerprint": self.fingerprint}


def keygen(path: Path) -> tuple[Path, Path]:
    """Write a new ed25519 private key (PEM, PKCS#8, mode 0600) to `path` and its public key to `path`.pub."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path, public = Path(path), Path(f"{path}.pub")
    for target in (path, public):
        if target.exists() or target.is_symlink():
            raise SignatureError(f"{target} exists; a key is never overwritten", "choose another path")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(private_pem)
        public.write_bytes(public_pem)
    except OSError as exc:
        raise SignatureError(
            f"cannot write the key to {exc.filename}: {exc.strerror}", "choose a writable path"
        ) from None
    return path, public


def load_private_key(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = _read_key(path, "private")
    passphrase = os.environ.get(PASSPHRASE_ENV)
    try:
        key = serialization.load_pem_private_key(data, passphrase.encode() if passphrase else None)
    except TypeError:  # encrypted without a passphrase, or a passphrase for a plain key
        raise SignatureError(
            f"{path} is {'not ' if passphrase else ''}an encrypted private key",
            f"{'unset' if passphrase else 'set'} {PASSPHRASE_ENV}",
        ) from None
    except ValueError:
        raise SignatureError(
            f"{path} is "
            + (
                "a public key; --sign takes the private key"
                if b"PUBLIC KEY" in data
                else "not a PEM private key (or the passphrase is wrong)"
            ),
            "make one with `vdeploy keygen PATH` or `openssl genpkey -algorithm ed25519 -out PATH`",
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path} is a {type(key).__name__.removesuffix('PrivateKey')} key, not ed25519", _KEY_HINT)
    return key


def load_public_key(path: Path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = _read_key(path, "public")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        private = b"PRIVATE KEY" in data
        raise SignatureError(
            f"{path} is {'a private key' if private else 'not a PEM public key'}; --verify takes the public key",
            "pass KEY.pub from `vdeploy keygen`, or `openssl pkey -in KEY -pubout -out KEY.pub`",
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path} is a {type(key).__name__.removesuffix('PublicKey')} key, not ed25519", _KEY_HINT)
    return key


_KEY_HINT = "make an ed25519 key with `vdeploy keygen PATH` or `openssl genpkey -algorithm ed25519 -out PATH`"


def _read_key(path: Path, which: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SignatureError(f"cannot read the {which} key {path}: {exc.strerror}", "check the path") from None
    if len(data) > 64 << 10:
        raise SignatureError(f"{path} is too large to be a {which} key", _KEY_HINT)
    return data


def _raw(public_key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(public_key) -> str:
    return "sha256:" + hashlib.sha256(_raw(public_key)).hexdigest()


def sign_bundle(bundle_dir: Path, private_key, manifest: dict | None = None) -> Path:
    """Write signature.json into `bundle_dir`, last. `manifest`: write manifest.json first, as BundleWriter.finish
    writes it (the same bytes: finish rewrites it unchanged before the rename)."""
    if manifest is not None:
        (Path(bundle_dir) / MANIFEST).write_text(strict_json.dumps(manifest, indent=2) + "\n")
    public = private_key.public_key()
    statement = {
        "schema": SCHEMA,
        "algorithm": ALGORITHM,
        "key_fingerprint": fingerprint(public),
        "files": [_entry(bundle_dir, rel) for rel in _bundle_files(bundle_dir)],
    }
    signature = private_key.sign(CONTEXT + _canonical(statement))
    document = {
        **statement,
        "public_key": base64.b64encode(_raw(public)).decode(),
        "signature": base64.b64encode(signature).decode(),
    }
    path = Path(bundle_dir) / SIGNATURE
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def sign_if_asked(request, bundle_dir: Path, manifest: dict) -> None:
    """Sign a bundle being written when the build asked for it (`request.sign_key`; build and cache restore)."""
    if request.sign_key is not None:
        sign_bundle(bundle_dir, load_private_key(request.sign_key), manifest)


def verify_bundle(bundle_dir: Path, trusted_key: Path | None = None) -> SignatureStatus:
    """The bundle's signature state; SignatureError when a signature is present but does not hold, when the trusted
    key did not sign it, or when a trusted key is given and the bundle is unsigned."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    bundle_dir = Path(bundle_dir)
    trusted = load_public_key(trusted_key) if trusted_key is not None else None
    path = bundle_dir / SIGNATURE
    if not path.is_file():
        if trusted is not None:
            raise SignatureError(
                f"{bundle_dir} is unsigned (no {SIGNATURE}); --verify needs a bundle built with --sign",
                "rebuild it with `vdeploy build --sign KEY`, or drop --verify to validate an unsigned bundle",
            )
        return SignatureStatus("unsigned")
    document = _read_signature(path)
    try:
        embedded = Ed25519PublicKey.from_public_bytes(base64.b64decode(document["public_key"], validate=True))
        signature = base64.b64decode(document["signature"], validate=True)
    except ValueError:
        raise SignatureError(f"{path}: public_key or signature is not base64 of an ed25519 value", _REBUILD) from None
    statement = {k: document[k] for k in ("schema", "algorithm", "key_fingerprint", "files")}
    if fingerprint(embedded) != statement["key_fingerprint"]:
        raise SignatureError(f"{path}: the key fingerprint does not match the key it holds", _REBUILD)
    if trusted is not None and _raw(trusted) != _raw(embedded):
        raise SignatureError(
            f"{bundle_dir} was signed by key {fingerprint(embedded)}, not by the trusted key {fingerprint(trusted)}",
            "check that --verify names the release key; a bundle re-signed by another key is not the release",
        )
    try:
        embedded.verify(signature, CONTEXT + _canonical(statement))
    except InvalidSignature:
        raise SignatureError(f"{path}: the signature does not match the signed file list (edited)", _REBUILD) from None
    _check_files(bundle_dir, statement["files"])
    return SignatureStatus("verified" if trusted is not None else "intact", statement["key_fingerprint"])


_REBUILD = "do not use this bundle; rebuild and sign it again, or fetch the released copy"


def _read_signature(path: Path) -> dict:
    try:
        document = json.loads(path.read_text())
    except ValueError as exc:
        raise SignatureError(f"{path} is not valid JSON ({exc})", _REBUILD) from None
    fields = {
        "schema": str,
        "algorithm": str,
        "key_fingerprint": str,
        "files": list,
        "public_key": str,
        "signature": str,
    }
    if not isinstance(document, dict) or any(not isinstance(document.get(k), t) for k, t in fields.items()):
        raise SignatureError(f"{path} is not a vdeploy signature ({', '.join(fields)} expected)", _REBUILD)
    if document["schema"] != SCHEMA or document["algorithm"] != ALGORITHM:
        raise SignatureError(
            f"{path}: {document['schema']} / {document['algorithm']} is not {SCHEMA} / {ALGORITHM}",
            "verify it with the vdeploy version that signed it",
        )
    for entry in document["files"]:
        if not (
            isinstance(entry, dict) and isinstance(entry.get("path"), str) and isinstance(entry.get("sha256"), str)
        ):
            raise SignatureError(f"{path}: a files[] entry has no path or sha256", _REBUILD)
    return document


def _check_files(bundle_dir: Path, signed: list[dict]) -> None:
    from vdeploy.validate.trust import inside

    on_disk = set(_bundle_files(bundle_dir))
    for entry in signed:
        path = inside(bundle_dir, entry["path"], "signed file")
        if entry["path"] not in on_disk:
            raise SignatureError(f"{entry['path']} was signed but is missing from the bundle", _REBUILD)
        if sha256_file(path) != entry["sha256"]:
            raise SignatureError(f"{entry['path']} was changed after the bundle was signed", _REBUILD)
    added = sorted(on_disk - {entry["path"] for entry in signed})
    if added:
        raise SignatureError(
            f"{added[0]} was added after the bundle was signed (not covered by the signature)", _REBUILD
        )


def _bundle_files(bundle_dir: Path) -> list[str]:
    """Relative POSIX paths of every regular file under the bundle but signature.json; a symbolic link or any
    other kind of entry is refused (a signature covers file contents, not where a link points)."""
    bundle_dir = Path(bundle_dir)
    found = []
    for root, dirs, files in os.walk(bundle_dir):
        for name in (*dirs, *files):
            path = Path(root) / name
            if path.is_symlink() or not (path.is_dir() or path.is_file()):
                rel = path.relative_to(bundle_dir).as_posix()
                raise SignatureError(f"the bundle holds {rel}, which is not a regular file or folder", _REBUILD)
        found += [(Path(root) / name).relative_to(bundle_dir).as_posix() for name in files]
    return sorted(rel for rel in found if rel != SIGNATURE)


def _entry(bundle_dir: Path, rel: str) -> dict:
    path = Path(bundle_dir) / rel
    return {"path": rel, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def _canonical(statement: dict) -> bytes:
    return json.dumps(statement, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
