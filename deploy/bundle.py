"""The release bundle: written into a temporary directory, then renamed into place.

BundleWriter(out_root, name) -> tmp dir (artifact, reference_io.npz, ...) -> finish(manifest) -> OUT/<name>/
An exception inside the `with` block removes the temporary directory: nothing half-written is left.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from vdeploy import strict_json
from vdeploy.errors import VdeployError
from vdeploy.load import sha256_file

MANIFEST = "manifest.json"
SCHEMA = "vdeploy.manifest/1"


class BundleWriter:
    def __init__(self, out_root: Path, name: str):
        self.out_root = Path(out_root)
        self.final = self.out_root / name
        self.tmp: Path | None = None
        self._created_root = False

    def __enter__(self) -> BundleWriter:
        check_out_dir(self.out_root)
        try:
            if not self.out_root.exists():
                self.out_root.mkdir(parents=True)
                self._created_root = True
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.tmp-", dir=self.out_root))
        except OSError as exc:
            raise OutDirError(
                f"cannot write a bundle in {self.out_root}: {exc.strerror}", "pass --out a writable directory"
            ) from None
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.tmp is not None and self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)
        if exc_type is not None and self._created_root and not any(self.out_root.iterdir()):
            self.out_root.rmdir()

    def file_entries(self) -> list[dict]:
        """Path, sha256 and size of every file written so far (the manifest lists itself nowhere)."""
        files = sorted(p for p in self.tmp.rglob("*") if p.is_file() and p.name != MANIFEST)
        return [
            {"path": p.relative_to(self.tmp).as_posix(), "sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in files
        ]

    def finish(self, manifest: dict) -> Path:
        """Write manifest.json and move the bundle into place, replacing an older bundle of the same name."""
        (self.tmp / MANIFEST).write_text(strict_json.dumps(manifest, indent=2) + "\n")
        os.chmod(self.tmp, 0o755)
        old = None
        if self.final.exists():
            old = self.final.with_name(f".{self.final.name}.old-{os.getpid()}")
            self.final.rename(old)
        self.tmp.rename(self.final)
        self.tmp = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final


class OutDirError(VdeployError):
    kind = "output"


def check_out_dir(out_root: Path) -> None:
    """Fail before any work when --out cannot hold bundles (a file, or under a file)."""
    for path in (Path(out_root), *Path(out_root).parents):
        if path.exists():
            if not path.is_dir():
                raise OutDirError(
                    f"--out {out_root} is not a directory ({path} is a file)",
                    "pass --out a directory (it is created when missing)",
                )
            return


def read_manifest(bundle_dir: Path) -> dict:
    return json.loads((Path(bundle_dir) / MANIFEST).read_text())
