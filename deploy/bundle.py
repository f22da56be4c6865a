"""The release bundle: written into a temporary directory, then swapped into place in one atomic step.

BundleWriter(out_root, name) -> sweep dead builds' leftovers -> OUT/.NAME.tmp-<pid>-<rand>/ (flock'd: ours while we
live) -> artifact, reference_io.npz, ... -> finish(manifest) -> rename-exchange with OUT/NAME/ -> old one removed
An exception (or SIGINT/SIGTERM/SIGHUP, raised as one) inside the `with` block removes the temporary directory; a
SIGKILLed build's leftovers are swept by the next build; concurrent writers of one bundle never leave it mixed or
missing (the last to finish wins). What is not a vdeploy bundle is never replaced.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from vdeploy import atomic, strict_json
from vdeploy.errors import VdeployError
from vdeploy.load import sha256_file

MANIFEST = "manifest.json"
SCHEMA = "vdeploy.manifest/1"
# .NAME.tmp-<pid>-<hex8> (ours), .NAME.old-<pid>-<hex8> (no renameat2); older: .NAME.tmp-<8 chars>, .NAME.old-<pid>
LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-(?:(?P<pid>\d+)(?:-[0-9a-f]{8})?|[a-z0-9_]{8})")


class BundleWriter:
    def __init__(self, out_root: Path, name: str):
        self.out_root = Path(out_root)
        self.final = self.out_root / name
        self.tmp: Path | None = None
        self._created_root = False

    def __enter__(self) -> BundleWriter:
        check_out_dir(self.out_root)
        check_replaceable(self.final)
        for attempt in range(5):
            try:
                self._created_root = _make_dir(self.out_root) or self._created_root
                sweep_leftovers(self.out_root)
                self.tmp = atomic.owned_dir(self.out_root, f".{self.final.name}.tmp-")
                return self
            except OSError as exc:
                if isinstance(exc, FileNotFoundError) and attempt < 4:
                    continue  # a concurrent build that failed removed the empty root: make it again
                raise OutDirError(
                    f"cannot write a bundle in {self.out_root}: {exc.strerror}", "pass --out a writable directory"
                ) from None
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        atomic.remove_owned(self.tmp)
        self.tmp = None
        if exc_type is not None and self._created_root:
            try:
                self.out_root.rmdir()  # only when empty: a concurrent build's files stay
            except OSError:
                pass

    def file_entries(self) -> list[dict]:
        """Path, sha256 and size of every file written so far (the manifest lists itself nowhere)."""
        files = sorted(p for p in self.tmp.rglob("*") if p.is_file() and p.name != MANIFEST)
        return [
            {"path": p.relative_to(self.tmp).as_posix(), "sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in files
        ]

    def finish(self, manifest: dict) -> Path:
        """Write manifest.json and swap the bundle into place, replacing an older bundle of the same name."""
        (self.tmp / MANIFEST).write_text(strict_json.dumps(manifest, indent=2) + "\n")
        self.tmp.chmod(0o755)
        try:
            old = atomic.swap_into_place(self.tmp, self.final, check_replaceable)
        except OSError as exc:
            raise OutDirError(f"cannot move the bundle into {self.final}: {exc.strerror}", "check --out") from None
        atomic.release(self.tmp)  # our flock now sits on the finished bundle: let it go
        self.tmp = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final


def _make_dir(path: Path) -> bool:
    """mkdir -p; True when this call created `path` itself (a concurrent creator is no error)."""
    try:
        path.mkdir(parents=True)
        return True
    except FileExistsError:
        return False


def sweep_leftovers(out_root: Path) -> None:
    """Remove what killed builds left in `out_root`; an older version's `.NAME.old-PID` whose bundle is missing
    (killed between its two renames) is the last good bundle: it is put back instead."""

    def recover(path: Path) -> bool:
        match = LEFTOVER.fullmatch(path.name)
        final = out_root / match["name"]
        if match["kind"] != "old" or final.exists() or final.is_symlink() or not is_bundle(path):
            return False
        if atomic.is_stale(path, int(match["pid"]) if match["pid"] else None):
            try:
                path.rename(final)
            except OSError:
                pass
        return True

    atomic.sweep(out_root, LEFTOVER, keep=recover)


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


def check_replaceable(path: Path) -> None:
    """Fail unless `path` is missing, an empty folder, or a vdeploy bundle: nothing else is ever replaced."""
    hint = "move it away or pass another --out (vdeploy replaces only bundles it wrote)"
    if path.is_symlink():
        raise OutDirError(f"{path} is a symbolic link, not a vdeploy bundle", hint)
    try:  # read through one open directory: a concurrent writer may swap another folder in under this name
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise OutDirError(f"{path} exists and is not a vdeploy bundle (a file)", hint) from None
    except OSError as exc:
        raise OutDirError(f"{path} is not a vdeploy bundle (it cannot be opened: {exc.strerror})", hint) from None
    try:
        manifest = json.loads(Path(f"/proc/self/fd/{fd}/{MANIFEST}").read_text())
    except FileNotFoundError:
        if not os.listdir(fd):
            return
        raise OutDirError(f"{path} exists and is not a vdeploy bundle (a folder without {MANIFEST})", hint) from None
    except (OSError, ValueError):
        raise OutDirError(f"{path} is not a vdeploy bundle (its {MANIFEST} is unreadable)", hint) from None
    finally:
        os.close(fd)
    if not isinstance(manifest, dict) or not str(manifest.get("schema", "")).startswith("vdeploy.manifest/"):
        raise OutDirError(f"{path} is not a vdeploy bundle (its {MANIFEST} has no vdeploy schema)", hint)


def is_bundle(path: Path) -> bool:
    try:
        check_replaceable(path)
    except OutDirError:
        return False
    return (path / MANIFEST).is_file()


def check_inputs_outside(bundle: Path, inputs: list[Path]) -> None:
    """Fail when an input file lives inside the bundle directory this build replaces (it would be deleted)."""
    try:
        inside = Path(bundle).resolve()
    except OSError:
        return
    for path in inputs:
        try:
            resolved = Path(path).resolve()
        except OSError:
            continue
        if resolved == inside or inside in resolved.parents:
            raise OutDirError(
                f"{path} lives inside the bundle {bundle} that this build would replace (and delete)",
                "move it out of the bundle first, or pass another --out",
            )
