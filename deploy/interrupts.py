"""SIGTERM and SIGHUP (what CI runners, `timeout` and a closed terminal send) handled like Ctrl-C while vdeploy works.

handled(): for its duration SIGINT / SIGTERM / SIGHUP raise Interrupted (a KeyboardInterrupt) in the main thread, so
every `with` / `finally` on the way out cleans up (the bundle's temp dir, temporary models, the artifact worker);
a second signal during that cleanup is ignored; the previous handlers come back after. Handlers the host program
installed itself (and ignored signals) are left alone; off the main thread nothing is installed.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
DEFAULTS = (signal.SIG_DFL, signal.default_int_handler)


class Interrupted(KeyboardInterrupt):
    """Raised by a SIGINT, SIGTERM or SIGHUP while a build runs."""

    def __init__(self, signum: int):
        self.signal = signal.Signals(signum)
        super().__init__(f"interrupted by {self.signal.name}")


@contextmanager
def handled() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def on_signal(signum, frame):
        nonlocal raised
        if not raised:  # only the first: cleanup must not be cut short by the next one
            raised = True
            raise Interrupted(signum)

    previous = {}
    for sig in SIGNALS:
        if signal.getsignal(sig) in DEFAULTS:
            previous[sig] = signal.signal(sig, on_signal)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
