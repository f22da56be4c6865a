"""Child side of interleave.py: load one runnable, warm up, then time `run N` requests from stdin until `quit`.

`serve(run_once)` speaks the protocol for any callable (benchmarks use it for their peers);
`python -m vdeploy.validate.interleave_worker JOB INPUTS` serves a vdeploy artifact.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

PREFIX = "@@"


def _say(payload) -> None:
    sys.stdout.write(PREFIX + json.dumps(payload) + "\n")
    sys.stdout.flush()


def serve(run_once: Callable[[], object], warmup: int = 5) -> int:
    for _ in range(warmup):
        run_once()
    _say("ready")
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            return 0
        times = []
        for _ in range(int(words[1])):
            t0 = time.perf_counter()
            run_once()
            times.append((time.perf_counter() - t0) * 1000.0)
        _say(times)
    return 0


def main(job: Path, inputs: Path) -> int:
    import numpy as np

    from vdeploy.backends import get_backend
    from vdeploy.backends.base import Artifact

    spec = json.loads(job.read_text())
    artifact = Artifact.from_dict(spec["artifact"])
    with np.load(inputs) as data:
        feeds = {name: data[name][0] for name in data.files}
    with get_backend(artifact.backend).open(artifact, Path(spec["bundle_dir"])) as session:

        def run_once():
            session.run(feeds)
            session.sync()

        return serve(run_once)


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
