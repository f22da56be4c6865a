"""Child-process side of isolate.run_artifact: open the artifact, run the samples, time it, write results.

It dies with its parent (PR_SET_PDEATHSIG, and a watchdog thread for a parent that is gone before that is set, or
where prctl is missing) and at its own deadline (job.json's deadline_s), so it never outlives the build.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

PR_SET_PDEATHSIG = 1
WATCH_S = 0.5


def die_with_parent(parent_pid: int | None) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux); exit now if it already has."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the watchdog below still sees the parent go
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def watchdog(job: Path, parent_pid: int | None, deadline_s: float | None) -> None:
    """A daemon thread: exit when the parent is gone or the deadline has passed (writing why, for the parent)."""
    started = time.monotonic()

    def watch():
        while True:
            time.sleep(WATCH_S)
            if parent_pid is not None and os.getppid() != parent_pid:
                os._exit(1)
            if deadline_s is not None and time.monotonic() - started > deadline_s:
                message = f"the artifact run passed its deadline of {deadline_s:.0f} s and was stopped"
                hint = "the artifact may hang on this host; try a smaller input shape"
                (job / "error.json").write_text(json.dumps({"message": message, "hint": hint}))
                os._exit(1)

    threading.Thread(target=watch, name="vdeploy-worker-watchdog", daemon=True).start()


def main(job: Path) -> int:
    from vdeploy.backends import get_backend
    from vdeploy.backends.base import Artifact
    from vdeploy.errors import VdeployError
    from vdeploy.validate.measure import measure
    from vdeploy.validate.power import find_meter

    spec = json.loads((job / "job.json").read_text())
    die_with_parent(spec.get("parent_pid"))
    watchdog(job, spec.get("parent_pid"), spec.get("deadline_s"))
    artifact = Artifact.from_dict(spec["artifact"])
    try:
        with np.load(job / "inputs.npz") as data:
            inputs = {name: data[name] for name in data.files}
        backend = get_backend(artifact.backend)
        with backend.open(artifact, Path(spec["bundle_dir"])) as session:
            count = next(iter(inputs.values())).shape[0]
            samples = [{n: a[i] for n, a in inputs.items()} for i in range(count)]
            per_sample = backend.run_many(session, samples)
            latency = energy = None
            power_reason = "not timed on this host"
            if spec["iters"] > 0:  # finding a meter starts tegrastats / NVML: only for timed runs
                meter, power_reason = find_meter(backend.power_meters)
                first = {n: a[0] for n, a in inputs.items()}
                latency, energy = measure(session, first, warmup=spec["warmup"], iters=spec["iters"], power_meter=meter)
    except VdeployError as exc:
        (job / "error.json").write_text(json.dumps(exc.as_dict()))
        return 1
    except Exception as exc:  # a runtime's own exception: report it as the backend's failure
        message = f"{artifact.backend} failed to run the artifact: {type(exc).__name__}: {str(exc).strip()[:300]}"
        (job / "error.json").write_text(json.dumps({"message": message, "hint": "rerun with VDEPLOY_DEBUG=1"}))
        return 1
    stacked = {f"out{i}": np.stack([np.asarray(s[i]) for s in per_sample]) for i in range(len(per_sample[0]))}
    np.savez(job / "outputs.npz", **stacked)
    import resource

    (job / "result.json").write_text(
        json.dumps(
            {
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,  # Linux reports KiB
                "latency_ms": list(latency.samples_ms) if latency else None,
                "energy": energy.to_manifest() if energy else None,
                "power_reason": power_reason,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
