"""What the Arm backends (Ethos-U via Vela, ExecuTorch XNNPACK) share: the `arm` toolchain venv, worker inputs, and a
session that runs an artifact in that venv through a persistent worker process.

job.source (PyTorch) --program_file--> model.pt2 (torch.export.save) ; {name: [N, *shape]} --write_inputs--> in0.. .npz
ServeSession: VENV/bin/python toolchain_workers/serve.py KIND FILE  <-- framed raw arrays over pipes -->  outputs

The vendor venv cannot unpickle vdeploy objects, so it gets files: the exported program and plain .npz arrays.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from vdeploy.errors import BackendError

TOOLCHAIN = "arm"  # backends/toolchains.py row; scripts/toolchains/arm.sh builds it


def toolchains():
    from vdeploy.backends import toolchains as module

    return module


def program_file(source, example: Sequence[np.ndarray], path: Path) -> Path:
    """The PyTorch model as a torch.export .pt2: the loaded program itself, else torch.export of the eager module."""
    import torch

    from vdeploy.errors import first_line

    if source is None or getattr(source, "format", None) is None or not source.is_torch:
        raise BackendError(
            "this target compiles from the PyTorch model, not from an ONNX file",
            "pass a PyTorch model (.pt2, TorchScript, --trust-pickle module or timm:NAME)",
        )
    program = source.program
    if program is None:
        args = tuple(torch.from_numpy(np.ascontiguousarray(a[:1])) for a in example)  # batch-stacked arrays
        try:
            program = torch.export.export(source.module, args)
        except Exception as exc:
            raise BackendError(
                f"torch.export could not capture the model for the vendor toolchain: {first_line(exc)}",
                "save the model with torch.export.save (a .pt2) and build from that file",
            ) from None
    torch.export.save(program, str(path))
    return path


def write_inputs(arrays: Sequence[np.ndarray], path: Path) -> Path:
    """Arrays stacked on the batch axis, as the workers read them (CalibrationData already is)."""
    np.savez(path, **{f"in{i}": np.ascontiguousarray(a) for i, a in enumerate(arrays)})
    return path


def ordered(samples: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Arrays in the model's positional input order (the feeds dict is already in graph-input order)."""
    return list(samples.values())


def stacked(samples: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Validation samples {name: [N, 1, *rest]} (one batch per sample) -> [N, *rest] on the batch axis."""
    return [a.reshape(a.shape[0] * a.shape[1], *a.shape[2:]) for a in samples.values()]


class ServeSession:
    """A Session whose runtime lives in the toolchain venv: one worker process, loaded once, fed over pipes.

    Host timings through it include the pipe transfer of inputs and outputs (well under a millisecond for image
    models; benchmarks/arm_cpu_runtimes.py measures it beside in-process runtimes)."""

    def __init__(self, kind: str, path: Path, input_names: Sequence[str], log: Path | None = None):
        self.input_names = list(input_names)
        self._kind = kind
        venv = toolchains().require(TOOLCHAIN)
        worker = toolchains().WORKERS / "serve.py"
        # the worker's stderr: never inside the bundle (its files are hashed), nor in the build's scratch temp dir
        self._log = open(log or toolchains().log_dir() / f"{kind}-serve-{os.getpid()}.log", "w")
        self._proc = subprocess.Popen(
            [str(venv / "bin" / "python"), str(worker), kind, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        self._header()  # {"ok": true, "ready": kind} once loaded

    def _header(self) -> dict:
        line = self._proc.stdout.readline()
        if not line:
            code = self._proc.wait()
            raise BackendError(
                f"the {self._kind} runtime worker exited ({code}) before answering", f"see {self._log.name}"
            )
        header = json.loads(line)
        if not header.get("ok"):
            raise BackendError(f"{self._kind} runtime: {header.get('message', 'failed')}", "see the worker log")
        return header

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        # feeds come in graph-input order (positional inputs of the program)
        arrays = (
            [np.ascontiguousarray(feeds[n]) for n in self.input_names]
            if self.input_names
            else [np.ascontiguousarray(a) for a in feeds.values()]
        )
        header = {"inputs": [{"shape": list(a.shape), "dtype": str(a.dtype)} for a in arrays]}
        self._proc.stdin.write((json.dumps(header) + "\n").encode())
        for a in arrays:
            self._proc.stdin.write(a.tobytes())
        self._proc.stdin.flush()
        reply = self._header()
        outputs = []
        for spec in reply["outputs"]:
            dtype = np.dtype(spec["dtype"])
            size = int(np.prod(spec["shape"])) * dtype.itemsize
            outputs.append(np.frombuffer(self._proc.stdout.read(size), dtype).reshape(spec["shape"]).copy())
        return outputs

    def sync(self) -> None:
        """run() returns when the worker has sent the outputs back: nothing is pending."""

    def __enter__(self) -> ServeSession:
        return self

    def __exit__(self, *exc) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()
