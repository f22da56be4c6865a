"""OpenVINO (CPU): the artifact is OpenVINO IR (model.xml + model.bin) converted from the legalized ONNX.

Inference precision is set explicitly: the CPU plugin's default may pick bf16 on AMX hosts, where this
runtime has been seen to die with SIGILL (ENVIRONMENT.md). Validation runs it in a child process.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from vdeploy.backends.base import Artifact, BackendBase, CompileJob, Int8Form, InterruptWatch, runtime_module
from vdeploy.errors import BackendError, first_line

INFERENCE_PRECISION = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32"}


class OpenVinoOptions(BaseModel):
    """CPU plugin settings a target (or one of its runtimes) fixes; they travel in the artifact's options."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    cpu_pinning: bool | None = None  # ENABLE_CPU_PINNING (None: OpenVINO's default, on for LATENCY on Linux)


class OpenVinoBackend(BackendBase):
    name = "openvino"
    options_model = OpenVinoOptions
    int8_form = Int8Form.nncf_openvino
    toolchain_packages = ("openvino", "nncf")
    run_options = {"INFERENCE_PRECISION_HINT": "f32|f16|bf16"}  # never CACHE_DIR & co. from a manifest

    def available(self) -> bool:
        return runtime_module("openvino") is not None

    def version(self) -> str:
        return runtime_module("openvino").__version__.split("-")[0]

    def compile(self, job: CompileJob) -> Artifact:
        """`job.model` is the legal onnx.ModelProto, or an openvino.Model already quantized (INT8 via NNCF)."""
        import onnx
        import openvino as ov

        model, precision, out_dir = job.model, job.precision, job.out_dir

        settings = self._settings(job.options)
        if isinstance(model, ov.Model):
            return self._save(model, precision, out_dir, settings)
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / "model.onnx"
            onnx.save(model, str(source))
            try:
                with InterruptWatch() as watch:
                    ov_model = ov.convert_model(str(source))
            except Exception as exc:  # OpenVINO raises its own exception types from C++
                watch.reraise(exc)  # a Ctrl-C it wrapped is an interrupt, not a conversion failure
                raise BackendError(
                    f"OpenVINO could not convert the model: {first_line(exc)}",
                    "run `vdeploy coverage` to see which ops the target lacks",
                ) from None
        canonical_names(ov_model, frozenset(n.name for n in model.graph.node))
        return self._save(ov_model, precision, out_dir, settings)

    @staticmethod
    def _settings(options) -> tuple[tuple[str, str], ...]:
        pinning = options.cpu_pinning if options is not None else None
        return () if pinning is None else (("ENABLE_CPU_PINNING", "YES" if pinning else "NO"),)

    def _save(self, ov_model, precision: str, out_dir: Path, settings: tuple = ()) -> Artifact:
        import openvino as ov

        canonical_names(ov_model)
        ov.save_model(ov_model, str(out_dir / "model.xml"), compress_to_fp16=False)
        hint = INFERENCE_PRECISION[precision]
        return Artifact(
            self.name,
            precision,
            "model.xml",
            ("model.xml", "model.bin"),
            (("INFERENCE_PRECISION_HINT", hint), *settings),
        )

    def open(self, artifact: Artifact, bundle_dir: Path) -> OpenVinoSession:
        return OpenVinoSession(bundle_dir / artifact.entry, dict(artifact.options))


def canonical_names(ov_model, keep: frozenset[str] = frozenset()) -> None:
    """OpenVINO names unnamed ops `<Type>_<n>` from a process-wide counter, so the same model built twice in one
    process (a release matrix worker) wrote different model.xml bytes; folded constants keep their source op's
    auto name (`Reshape_15` on a Const). Every `<Word>_<n>` name not in `keep` (the ONNX node names) becomes
    `<Word>_<op index>`."""
    for index, op in enumerate(ov_model.get_ordered_ops()):
        auto = re.fullmatch(r"([A-Z][A-Za-z0-9]*)_\d+", op.get_friendly_name())
        if auto and auto.group(0) not in keep:
            op.set_friendly_name(f"{auto.group(1)}_{index}")


class OpenVinoSession:
    def __init__(self, path: Path, options: dict[str, str]):
        import openvino as ov

        core = ov.Core()
        self._compiled = core.compile_model(str(path), "CPU", options)
        self._request = self._compiled.create_infer_request()
        self.input_names = [port.get_any_name() for port in self._compiled.inputs]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self._request.infer(feeds)
        return [np.array(self._request.get_output_tensor(i).data) for i in range(len(self._compiled.outputs))]

    def sync(self) -> None:
        """infer() is blocking on the CPU plugin."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._request = None
        self._compiled = None
