"""Time several runnables side by side: one persistent child process each, turns taken in a shuffled order.

[(argv, env)] -> one child per entry (it loads its artifact, warms up, prints READY, then waits on stdin)
-> ROUNDS rounds, each in a new seeded order with a short pause before every turn: each child in turn runs RUNS
timed inferences and prints their times -> samples per entry.
A child idles (blocked on its stdin) while another runs, so no runtime's worker threads compete with another's,
and a machine-wide slowdown hits every entry alike. `time_artifacts` does this for built artifacts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vdeploy.backends.base import Artifact
from vdeploy.errors import BackendError
from vdeploy.validate.measure import Latency

# ONNX Runtime's worker threads spin on after a run (allow_spinning, its default): measured, the entry timed right
# after a spinning ORT child ran 1.5-1.7x slower when the order was a fixed rotation. A pause lets them settle.
SETTLE_S = 0.05
PREFIX = "@@"  # protocol lines start with it; anything else a runtime prints on stdout is skipped


def _reply(proc: subprocess.Popen, label: str):
    while True:
        line = proc.stdout.readline()
        if not line:
            err = proc.stderr.read().strip().splitlines() if proc.stderr else []
            raise BackendError(
                f"timing child for {label} ended early (exit {proc.wait()}): {(err or ['no output'])[-1][:300]}",
                "rerun with VDEPLOY_DEBUG=1, or time the artifacts one by one with `vdeploy validate`",
            )
        if line.startswith(PREFIX):
            return json.loads(line[len(PREFIX) :])


def interleave(
    commands: list[tuple[list[str], dict]], labels: list[str], *, rounds: int = 10, runs: int = 3
) -> list[list[float]]:
    """Samples (ms) per command, taken in `rounds` shuffled turns of `runs` inferences each."""
    procs = []
    try:
        for argv, env in commands:
            procs.append(
                subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env={**os.environ, **env},
                )
            )
        for proc, label in zip(procs, labels):
            _reply(proc, label)  # READY: loaded and warmed up
        samples: list[list[float]] = [[] for _ in procs]
        order = np.random.default_rng(0)  # a new order each round: no entry always follows the same one
        for _ in range(rounds):
            for i in order.permutation(len(procs)):
                time.sleep(SETTLE_S)
                procs[i].stdin.write(f"run {runs}\n")
                procs[i].stdin.flush()
                samples[i] += _reply(procs[i], labels[i])
        return samples
    finally:
        for proc in procs:
            if proc.poll() is None:
                try:
                    proc.stdin.write("quit\n")
                    proc.stdin.flush()
                    proc.wait(timeout=30)
                except (OSError, subprocess.TimeoutExpired):
                    proc.kill()
                    proc.wait()


def time_artifacts(
    entries: list[tuple[Artifact, Path, dict, dict[str, np.ndarray]]], *, rounds: int = 10, runs: int = 3
) -> list[Latency]:
    """Latency of each (Artifact, bundle_dir, run_env, feeds {name: [N, ...]}) on its first sample, side by side."""
    with tempfile.TemporaryDirectory(prefix="vdeploy-interleave-") as tmp:
        commands, labels = [], []
        for i, (artifact, bundle_dir, env, feeds) in enumerate(entries):
            inputs = Path(tmp) / f"inputs{i}.npz"
            np.savez(inputs, **{name: array[:1] for name, array in feeds.items()})
            job = Path(tmp) / f"job{i}.json"
            job.write_text(json.dumps({"artifact": artifact.to_dict(), "bundle_dir": str(bundle_dir)}))
            commands.append(([sys.executable, "-m", "vdeploy.validate.interleave_worker", str(job), str(inputs)], env))
            labels.append(artifact.backend)
        samples = interleave(commands, labels, rounds=rounds, runs=runs)
    return [Latency.from_samples(s) for s in samples]
