"""The host's own failures (a full disk, a read-only or forbidden path, a dangling link) as user errors with a
hint, not as vdeploy's internal errors.

OSError -> host_error(exc, where) -> HostError (kind "disk" / "path") | None (not a host condition: a real bug)
"""

from __future__ import annotations

import errno
import tempfile
from pathlib import Path

from vdeploy.errors import VdeployError


class HostError(VdeployError):
    kind = "disk"


class PathError(VdeployError):
    kind = "path"


def host_error(exc: OSError, where: str = "") -> VdeployError | None:
    """A user-facing error for an OSError that says something about the host, else None."""
    target = exc.filename or where or "a file"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return HostError(
            f"no space left on the device while writing {target}",
            f"free disk space (or pass --out on another disk); temporary files go to {tempfile.gettempdir()} "
            "(set TMPDIR to move them); nothing was written",
        )
    if exc.errno == errno.EROFS:
        return PathError(f"{target} is on a read-only file system", "pass --out a writable directory")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PathError(f"permission denied: {target}", "check the file's permissions or pass another path")
    if exc.errno == errno.EFBIG:
        return HostError(f"a file grew past the size limit of this host or file system: {target}", "check ulimit -f")
    return None


def refuse_dangling_link(path: Path, what: str) -> None:
    """A symbolic link whose target does not exist cannot hold a bundle: say so, rather than fail on the rename."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise PathError(
            f"{what} {path} is a symbolic link to {path.readlink()}, which does not exist",
            "remove the link or create its target, or pass another --out",
        )
