"""ONNX Runtime (CPU EP): the artifact is the legalized ONNX file itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vdeploy.backends.base import Artifact, BackendBase, CompileJob, runtime_module


class OnnxRuntimeBackend(BackendBase):
    name = "onnxruntime"
    toolchain_packages = ("onnxruntime",)

    def available(self) -> bool:
        return runtime_module("onnxruntime") is not None

    def version(self) -> str:
        return runtime_module("onnxruntime").__version__

    def compile(self, job: CompileJob) -> Artifact:
        import onnx

        onnx.save(job.model, str(job.out_dir / "model.onnx"))
        return Artifact(self.name, job.precision, "model.onnx", ("model.onnx",))

    def open(self, artifact: Artifact, bundle_dir: Path) -> OnnxRuntimeSession:
        return OnnxRuntimeSession(bundle_dir / artifact.entry)


class OnnxRuntimeSession:
    def __init__(self, path: Path):
        import onnxruntime as ort

        self._session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self._session.get_inputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._session.run(None, feeds)

    def sync(self) -> None:
        """CPU execution is synchronous: run() returns when the outputs are ready."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._session = None
