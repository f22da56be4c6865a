"""ONNX Runtime (CPU EP): the artifact is the legalized ONNX file itself (+ session settings in its options)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from vdeploy.backends.base import Artifact, BackendBase, CompileJob, runtime_module

SPINNING = "session.intra_op.allow_spinning"


class OrtOptions(BaseModel):
    """Session settings a target (or one of its runtimes) fixes; they travel in the artifact's options."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    spinning: bool | None = None  # intra-op threads spin between runs (None: ONNX Runtime's default, on)


class OnnxRuntimeBackend(BackendBase):
    name = "onnxruntime"
    options_model = OrtOptions
    toolchain_packages = ("onnxruntime",)

    def available(self) -> bool:
        return runtime_module("onnxruntime") is not None

    def version(self) -> str:
        return runtime_module("onnxruntime").__version__

    def compile(self, job: CompileJob) -> Artifact:
        import onnx

        onnx.save(job.model, str(job.out_dir / "model.onnx"))
        spinning = job.options.spinning if job.options is not None else None
        settings = () if spinning is None else ((SPINNING, "1" if spinning else "0"),)
        return Artifact(self.name, job.precision, "model.onnx", ("model.onnx",), settings)

    def open(self, artifact: Artifact, bundle_dir: Path) -> OnnxRuntimeSession:
        return OnnxRuntimeSession(bundle_dir / artifact.entry, dict(artifact.options))


class OnnxRuntimeSession:
    def __init__(self, path: Path, config: dict[str, str] | None = None):
        """`config`: ONNX Runtime session config entries (e.g. session.intra_op.allow_spinning)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        for key, value in (config or {}).items():
            options.add_session_config_entry(key, value)
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self._session.get_inputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._session.run(None, feeds)

    def sync(self) -> None:
        """CPU execution is synchronous: run() returns when the outputs are ready."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._session = None
