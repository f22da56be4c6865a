"""What `vdeploy validate` takes from a bundle's manifest before it reads or runs anything.

manifest dict -> required keys and types -> every files[] path and the artifact entry resolve inside the bundle
(relative, no `..`, no symlink on the way) -> the entry and every artifact file listed in files[] (so hashed)
-> artifact.options on the backend's allow-list (BackendBase.run_options) -> Artifact
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from vdeploy.errors import VdeployError

REQUIRED: dict[str, type | tuple[type, ...]] = {
    "target": str,
    "files": list,
    "artifact": dict,
    "budgets": dict,
    "size_mb": (int, float),
}
ARTIFACT_REQUIRED: dict[str, type] = {"backend": str, "precision": str, "entry": str, "files": list}
REFERENCE_IO = "reference_io.npz"


class BundleError(VdeployError):
    kind = "bundle"


def check_structure(manifest: object, where: Path) -> dict:
    """The manifest's keys that validate reads, each present with the right type, else one clear BundleError."""
    if not isinstance(manifest, dict):
        raise BundleError(f"{where} is not a manifest (a JSON object)", "rebuild the bundle")
    for key, kind in REQUIRED.items():
        if key not in manifest:
            raise BundleError(f"{where} has no {key!r}: it is not a complete vdeploy manifest", "rebuild the bundle")
        if not isinstance(manifest[key], kind) or isinstance(manifest[key], bool):
            raise BundleError(f"{where}: {key!r} has the wrong type", "rebuild the bundle")
    for key, kind in ARTIFACT_REQUIRED.items():
        if not isinstance(manifest["artifact"].get(key), kind):
            raise BundleError(f"{where}: artifact.{key} is missing or has the wrong type", "rebuild the bundle")
    for index, entry in enumerate(manifest["files"]):
        if not (
            isinstance(entry, dict) and isinstance(entry.get("path"), str) and isinstance(entry.get("sha256"), str)
        ):
            raise BundleError(f"{where}: files[{index}] needs a path and a sha256", "rebuild the bundle")
    if not isinstance(manifest["budgets"].get("numerics"), dict):
        raise BundleError(f"{where}: budgets.numerics (the tolerances) is missing", "rebuild the bundle")
    return manifest


def inside(bundle_dir: Path, relative: str, what: str) -> Path:
    """bundle_dir / relative, refused unless it stays inside the bundle: a relative POSIX path without `..`,
    with no symlink on the way (a link could point anywhere)."""
    pure = PurePosixPath(relative)
    refuse = None
    if not relative or "\\" in relative or "\x00" in relative:
        refuse = "is not a plain relative path"
    elif pure.is_absolute():
        refuse = "is an absolute path"
    elif ".." in pure.parts:
        refuse = "climbs out of the bundle (..)"
    if refuse is None:
        path = Path(bundle_dir)
        for part in pure.parts:
            path = path / part
            if path.is_symlink():
                refuse = f"goes through a symbolic link ({path.name} -> {path.readlink()})"
                break
    if refuse is not None:
        raise BundleError(
            f"the manifest's {what} {relative!r} {refuse}: validate reads only files inside the bundle",
            "the manifest was edited or the bundle was not written by vdeploy; rebuild it",
        )
    return Path(bundle_dir) / pure


def checked_artifact(bundle_dir: Path, manifest: dict):
    """The manifest's artifact, once its entry and files are inside the bundle and hashed, and its options are ones
    its backend allows."""
    from vdeploy.backends import backend_class
    from vdeploy.backends.base import Artifact

    listed = {entry["path"] for entry in manifest["files"]}
    for relative in listed:
        inside(bundle_dir, relative, "file")
    data = manifest["artifact"]
    for relative in (data["entry"], *data["files"], REFERENCE_IO):
        if not isinstance(relative, str):
            raise BundleError(f"the manifest's artifact files hold a non-path {relative!r}", "rebuild the bundle")
        inside(bundle_dir, relative, "artifact entry" if relative == data["entry"] else "artifact file")
        if relative not in listed:
            raise BundleError(
                f"{relative} is used by validate but not listed (with its sha256) in the manifest's files[]",
                "an unhashed file could be swapped freely; rebuild the bundle",
            )
    if data["entry"] not in data["files"]:
        raise BundleError(f"the artifact entry {data['entry']!r} is not one of the artifact's files", "rebuild it")
    options = data.get("options", {})
    if not isinstance(options, dict):
        raise BundleError("the manifest's artifact.options is not a mapping", "rebuild the bundle")
    backend = backend_class(data["backend"])
    for key, value in options.items():
        pattern = backend.run_options.get(key)
        if pattern is None:
            allowed = ", ".join(backend.run_options) or "none"
            raise BundleError(
                f"artifact option {key!r} is not on the {backend.name} backend's allow-list (allowed: {allowed})",
                "options reach the runtime: only the ones vdeploy writes are accepted; rebuild the bundle",
            )
        if not isinstance(value, str) or not re.fullmatch(pattern, value):
            raise BundleError(
                f"artifact option {key}={value!r} is not an allowed value for the {backend.name} backend",
                "rebuild the bundle",
            )
    return Artifact.from_dict(data)
