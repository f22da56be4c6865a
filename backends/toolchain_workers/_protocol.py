"""The worker side of vdeploy.backends.toolchains.call: standard library only (the vendor venv has no vdeploy).

JSON request on stdin -> handler(request) -> {"ok": true, **result} as the last stdout line; an exception ->
{"ok": false, "message", "hint"}. Everything the vendor library prints (to stdout or stderr, from Python or C) goes to
stderr, which the caller keeps as the log; progress(msg) lines reach the caller's progress display.
"""

from __future__ import annotations

import json
import os
import sys
import traceback


class WorkerError(Exception):
    """A failure the user can act on: message and hint go back to vdeploy as they are."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message, self.hint = message, hint


def progress(message: str) -> None:
    sys.stderr.write(f"progress: {message}\n")
    sys.stderr.flush()


def serve(handler) -> None:
    request = json.loads(sys.stdin.read() or "{}")
    reply_fd = os.dup(1)
    sys.stdout.flush()
    os.dup2(2, 1)  # vendor prints (Python and C) land in the log, never in the reply channel
    try:
        reply = {"ok": True, **(handler(request) or {})}
    except WorkerError as exc:
        reply = {"ok": False, "message": exc.message, "hint": exc.hint}
    except Exception as exc:  # noqa: BLE001 - the caller turns this into one line and keeps the traceback in the log
        traceback.print_exc()
        lines = [line for line in str(exc).splitlines() if line.strip()]
        reply = {"ok": False, "message": f"{type(exc).__name__}: {lines[0].strip() if lines else ''}"[:300], "hint": ""}
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(reply_fd, (json.dumps(reply) + "\n").encode())
    os.close(reply_fd)
