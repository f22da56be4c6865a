"""Run an aarch64 TVM relax executable on an x86_64 host under qemu-user, through the C++ runner.

feeds -> inputs.bin --qemu-aarch64 runner (model.so + params.bin)--> outputs.bin -> outputs (+ latency_ms)

The runner and the aarch64 runtime libs are installed by scripts/install_tvm_aarch64_runtime.sh.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from vdeploy.errors import BackendError

SYSROOT = Path("/usr/aarch64-linux-gnu")
RUNNER_SRC = Path(__file__).parent / "tvm_runner" / "runner.cc"
INSTALL_HINT = "run scripts/install_tvm_aarch64_runtime.sh"
TIMEOUT_S = 1800  # qemu emulates every instruction: a large model over many samples is slow


def runtime_dir() -> Path:
    return Path(os.environ.get("VDEPLOY_TVM_AARCH64") or Path.home() / ".cache" / "vdeploy" / "tvm-aarch64")


RUNTIME_DIR = runtime_dir()


def _tvm_versions() -> str:
    import importlib.metadata as md

    return f"apache-tvm=={md.version('apache-tvm')} apache-tvm-ffi=={md.version('apache-tvm-ffi')}"


def runner_problem() -> str | None:
    """Why the qemu runner cannot be used here (one line naming the install script), or None if it can."""
    runner, version = runtime_dir() / "runner", runtime_dir() / "VERSION"
    if shutil.which("qemu-aarch64") is None:
        return f"qemu-aarch64 not found; {INSTALL_HINT}"
    if not SYSROOT.is_dir():
        return f"aarch64 sysroot {SYSROOT} not found (apt package g++-aarch64-linux-gnu); {INSTALL_HINT}"
    if not runner.is_file() or not version.is_file():
        return f"aarch64 TVM runner not installed in {runtime_dir()}; {INSTALL_HINT}"
    try:
        want = _tvm_versions()
    except Exception:
        return "apache-tvm is not installed on the host; install vdeploy[tvm]"
    have = version.read_text().strip()
    if have != want:
        return f"aarch64 TVM runner in {runtime_dir()} is for {have}, host has {want}; {INSTALL_HINT}"
    built_from = runtime_dir() / "runner.sha256"
    if RUNNER_SRC.is_file() and (
        not built_from.is_file()
        or built_from.read_text().strip() != hashlib.sha256(RUNNER_SRC.read_bytes()).hexdigest()
    ):
        return f"aarch64 TVM runner in {runtime_dir()} was built from an older runner.cc; {INSTALL_HINT}"
    return None


def write_params(path: Path, arrays: list[np.ndarray]) -> None:
    """Write arrays as the runner's params file: a TVM param dict with keys p0..pN in argument order."""
    _save({f"p{i}": a for i, a in enumerate(arrays)}, path)


def _save(named: dict[str, np.ndarray], path: Path) -> None:
    import tvm

    tvm.runtime.save_param_dict_to_file(
        {k: tvm.runtime.tensor(np.asarray(v, order="C")) for k, v in named.items()}, str(path)
    )


class QemuSession:
    """A Session over a cross-compiled executable; every run starts one qemu process that loads params anew."""

    def __init__(self, lib_path: Path, params_path: Path, input_names: list[str], num_threads: int = 1):
        problem = runner_problem()
        if problem:
            raise BackendError("cannot run the aarch64 TVM module under qemu: " + problem.split(";")[0], INSTALL_HINT)
        self.lib_path, self.params_path = Path(lib_path).resolve(), Path(params_path).resolve()
        self.input_names = list(input_names)
        self.num_threads = num_threads
        self.last_latency_ms: list[float] = []  # per-iteration times of the last run_many(iters > 0)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.run_many([feeds])[0]

    def run_many(self, samples: list[dict[str, np.ndarray]], warmup: int = 0, iters: int = 0) -> list[list[np.ndarray]]:
        """Outputs of every sample, from one qemu process. With iters > 0, also times sample 0 (last_latency_ms)."""
        if not samples:
            return []
        import tvm

        missing = sorted({n for s in samples for n in self.input_names if n not in s})
        if missing:
            raise BackendError(f"missing model inputs {missing}", f"feed every input of {self.input_names}")
        with tempfile.TemporaryDirectory(prefix="vdeploy-qemu-") as tmp:
            inputs, outputs = Path(tmp) / "inputs.bin", Path(tmp) / "outputs.bin"
            _save(
                {f"s{i}_in{j}": s[name] for i, s in enumerate(samples) for j, name in enumerate(self.input_names)},
                inputs,
            )
            cmd = [
                "qemu-aarch64",
                "-L",
                str(SYSROOT),
                str(runtime_dir() / "runner"),
                str(self.lib_path),
                str(self.params_path),
                str(inputs),
                str(outputs),
                str(warmup),
                str(iters),
            ]
            env = dict(os.environ, TVM_NUM_THREADS=str(self.num_threads))
            try:
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise BackendError(
                    f"the aarch64 TVM runner under qemu took over {TIMEOUT_S} s on {len(samples)} samples",
                    "validate with fewer samples",
                ) from None
            if proc.returncode != 0:
                lines = [line for line in proc.stderr.splitlines() if line.strip()]
                last = lines[-1].strip() if lines else f"exit code {proc.returncode}"
                raise BackendError(
                    f"the aarch64 TVM module failed under qemu: {last}",
                    "check that the module was built for aarch64 with this apache-tvm version",
                )
            found = tvm.runtime.load_param_dict_from_file(str(outputs))
            self.last_latency_ms = [
                float(v) for line in proc.stdout.splitlines() if line.startswith("latency_ms") for v in line.split()[1:]
            ]
        results = []
        for i in range(len(samples)):
            outs, k = [], 0
            while f"s{i}_out{k}" in found:
                outs.append(found[f"s{i}_out{k}"].numpy())
                k += 1
            results.append(outs)
        return results

    def sync(self) -> None:
        pass  # every run waits for its qemu process

    def __enter__(self) -> QemuSession:
        return self

    def __exit__(self, *exc) -> None:
        pass
