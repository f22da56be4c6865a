"""Filesystem steps that stay whole under concurrency and kills: locked temp dirs, rename-exchange, stale sweeps.

owned_dir(parent, prefix) -> PREFIX<pid>-<random>/ held by an flock on the dir for as long as this process lives
swap_into_place(tmp, final): rename(tmp -> final) without replacing, else renameat2(RENAME_EXCHANGE) — one atomic
step, so `final` is always one whole directory (the last writer wins); where the kernel or filesystem lacks
renameat2, the same under an flock'd lock file.
sweep(parent, pattern): removes leftovers of dead processes (lock free, owner pid gone, older than a grace time).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import secrets
import shutil
import time
from pathlib import Path

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
AT_FDCWD = -100
GRACE_S = 5.0  # a leftover younger than this is never swept (covers mkdir -> flock in a live process)
UNOWNED_AGE_S = 3600.0  # a leftover whose name holds no pid (older versions) is swept after this
_held: dict[str, int] = {}  # path -> fd holding its flock (closed by release() or at process exit)


def owned_dir(parent: Path, prefix: str) -> Path:
    """Create PARENT/<prefix><pid>-<random> and hold an exclusive flock on it (released when this process dies)."""
    for _ in range(100):
        path = Path(parent) / f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _held[str(path)] = fd
        return path
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(parent))


def release(path: Path) -> None:
    """Drop the flock of an owned dir (after it was removed or renamed into place)."""
    fd = _held.pop(str(path), None)
    if fd is not None:
        os.close(fd)


def remove_owned(path: Path | None) -> None:
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
        release(path)


def _renameat2(src: Path, dst: Path, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.renameat2  # AttributeError where libc lacks it (glibc < 2.28, musl, macOS)
    if fn(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(src), None, str(dst))


def _exchange_supported(parent: Path) -> bool:
    try:
        _renameat2(parent / ".vdeploy-probe-missing-a", parent / ".vdeploy-probe-missing-b", RENAME_EXCHANGE)
    except AttributeError:
        return False
    except OSError as exc:
        return exc.errno == errno.ENOENT  # EINVAL / ENOSYS: not on this filesystem or kernel
    return True


def swap_into_place(tmp: Path, final: Path, check_replaceable) -> Path | None:
    """Move the directory `tmp` to `final` atomically. Returns the path now holding the previous `final` (the
    caller removes it) or None. `check_replaceable(path)` raises when what sits at `final` must not be replaced."""
    if not _exchange_supported(final.parent):
        return _swap_locked(tmp, final, check_replaceable)
    for _ in range(50):
        try:
            _renameat2(tmp, final, RENAME_NOREPLACE)
            return None
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        check_replaceable(final)
        try:
            _renameat2(tmp, final, RENAME_EXCHANGE)
        except FileNotFoundError:  # removed between the two calls: try the plain rename again
            continue
        try:
            check_replaceable(tmp)  # what we swapped out: a non-bundle that appeared in the race goes back
        except Exception:
            _renameat2(tmp, final, RENAME_EXCHANGE)
            raise
        return tmp
    raise OSError(errno.EBUSY, "the bundle kept changing under concurrent writers", str(final))


def _swap_locked(tmp: Path, final: Path, check_replaceable) -> Path | None:
    """The same without renameat2: writers of one bundle take turns under an flock'd `.NAME.lock` (left in place)."""
    lock = os.open(final.parent / f".{final.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = None
        if final.exists() or final.is_symlink():
            check_replaceable(final)
            old = final.with_name(f".{final.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
            final.rename(old)
        tmp.rename(final)
        return old
    finally:
        os.close(lock)


def _owner_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def is_stale(path: Path, pid: int | None) -> bool:
    """True when no live process owns `path`: its flock is free and its owner pid (if its name holds one) is gone,
    beyond a few seconds' grace; a name without a pid (older versions) must be an hour old."""
    try:
        age = time.time() - path.lstat().st_mtime
        if path.is_symlink() or not path.is_dir():
            return False
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # a live process holds it
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    if pid is None:
        return age > UNOWNED_AGE_S
    return age > GRACE_S and (not _owner_alive(pid) or age > 24 * UNOWNED_AGE_S)  # a reused pid: a day


def sweep(parent: Path, pattern: re.Pattern, keep=lambda path: False) -> list[Path]:
    """Remove stale leftovers directly under `parent` whose name matches `pattern` (its group `pid`, when it
    matched, names the owner); returns what was removed."""
    removed: list[Path] = []
    try:
        entries = list(Path(parent).iterdir())
    except OSError:
        return removed
    for path in entries:
        match = pattern.fullmatch(path.name)
        if match is None or keep(path):
            continue
        pid = match.groupdict().get("pid")
        if is_stale(path, int(pid) if pid else None):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
