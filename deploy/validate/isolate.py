"""Run an artifact in a child process, so a runtime that crashes (SIGILL, SIGSEGV) cannot take the CLI with it.

parent: write job.json + inputs.npz -> `python -m vdeploy.validate.worker JOB` -> outputs.npz + result.json
A crash becomes a BackendError naming the backend, the signal and the workaround.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vdeploy.backends.base import Artifact
from vdeploy.errors import BackendError
from vdeploy.validate.measure import Latency

SIGNAL_HINTS = {
    signal.SIGILL: "the runtime used CPU instructions this host cannot run (seen with bf16/AMX kernels); "
    "retry with --precision fp32, or set ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI before running vdeploy",
    signal.SIGSEGV: "the runtime crashed; try another precision or report the model to the runtime's maintainers",
    signal.SIGKILL: "the process was killed, most often for lack of memory; close other work or use a smaller input",
}


DEADLINE_GRACE_S = 30.0  # the worker's own deadline runs this long past the parent's timeout


@dataclass(frozen=True)
class RunResult:
    outputs: list[np.ndarray]  # one array per model output, stacked over samples
    latency: Latency | None
    energy: dict | None = None  # Energy.to_manifest() of the timed runs, when a power meter saw them
    power_reason: str = ""  # why there is no energy reading
    peak_rss_mb: float | None = None  # peak resident memory of the child that loaded and ran the artifact


def run_artifact(
    artifact: Artifact,
    bundle_dir: Path,
    inputs: dict[str, np.ndarray],
    *,
    warmup: int,
    iters: int,
    timeout_s: float = 900.0,
    env: dict[str, str] | None = None,
) -> RunResult:
    """Run every sample of `inputs` ({name: [samples, *shape]}) through the artifact; time sample 0 if iters > 0."""
    with tempfile.TemporaryDirectory(prefix="vdeploy-run-") as tmp:
        job = Path(tmp)
        np.savez(job / "inputs.npz", **inputs)
        (job / "job.json").write_text(
            json.dumps(
                {
                    "artifact": artifact.to_dict(),
                    "bundle_dir": str(bundle_dir),
                    "warmup": warmup,
                    "iters": iters,
                    "parent_pid": os.getpid(),  # the worker dies with this process
                    "deadline_s": timeout_s + DEADLINE_GRACE_S,  # ... and on its own, should this one hang
                }
            )
        )
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "vdeploy.validate.worker", str(job)],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                env={**os.environ, **(env or {})},
            )
        except subprocess.TimeoutExpired:
            raise BackendError(
                f"{artifact.backend} did not finish validation within {timeout_s:.0f} s",
                "the artifact may hang on this host; try a smaller input shape",
            ) from None
        if proc.returncode < 0:
            sig = signal.Signals(-proc.returncode)
            raise BackendError(
                f"{artifact.backend} crashed with {sig.name} while running the artifact",
                SIGNAL_HINTS.get(sig, "rerun to check it repeats, then report it"),
            )
        error = job / "error.json"
        if error.exists():
            data = json.loads(error.read_text())
            raise BackendError(data["message"], data.get("hint", ""))
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise BackendError(
                f"{artifact.backend} validation exited with code {proc.returncode}: {last[:300]}",
                "rerun with VDEPLOY_DEBUG=1 for details",
            )
        with np.load(job / "outputs.npz") as data:
            outputs = [data[f"out{i}"] for i in range(len(data.files))]
        result = json.loads((job / "result.json").read_text())
        samples = result.get("latency_ms")
        return RunResult(
            outputs,
            Latency.from_samples(samples) if samples else None,
            result.get("energy"),
            result.get("power_reason", ""),
            result.get("peak_rss_mb"),
        )
