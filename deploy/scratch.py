"""A build's own temporary directory, so that even a SIGKILLed build leaves nothing behind for long.

build_scratch(): TMP/vdeploy-<pid>-<rand>/ (flock'd while this process lives) becomes tempfile's and $TMPDIR's
directory for the build (temporary models, the artifact worker's job files, runtimes' scratch files) -> removed on
the way out, also on an exception or an interrupt. On entry, those of dead processes are swept.
Nested or concurrent builds in one process share the outermost one's directory.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vdeploy import atomic

PREFIX = "vdeploy-"
OWNED = re.compile(r"vdeploy-(?P<pid>\d+)-[0-9a-f]{8}")
_lock = threading.Lock()
_users = 0
_saved: tuple = ()


@contextmanager
def build_scratch() -> Iterator[Path]:
    global _users, _saved
    with _lock:
        if _users == 0:
            system_tmp = Path(tempfile.gettempdir())
            atomic.sweep(system_tmp, OWNED)
            root = atomic.owned_dir(system_tmp, PREFIX)
            _saved = (tempfile.tempdir, os.environ.get("TMPDIR"), root)
            tempfile.tempdir = str(root)
            os.environ["TMPDIR"] = str(root)
        _users += 1
        root = _saved[2]
    try:
        yield root
    finally:
        with _lock:
            _users -= 1
            if _users == 0:
                tempdir, env, root = _saved
                tempfile.tempdir = tempdir
                if env is None:
                    os.environ.pop("TMPDIR", None)
                else:
                    os.environ["TMPDIR"] = env
                atomic.remove_owned(root)
