"""NPU hand-off: the artifact is legal ONNX for the vendor's compiler (RKNN, Hailo DFC, Vela, ...).

The vendor compiler and the device are not on this host, so this backend checks what can be checked here: the legal
graph runs in ONNX Runtime and its numerics are gated. Host CPU timings say nothing about the NPU and are not taken.
"""

from __future__ import annotations

from pathlib import Path

from vdeploy.backends.base import Artifact, BackendBase, CompileJob, Int8Form
from vdeploy.backends.onnxruntime import OnnxRuntimeBackend, OnnxRuntimeSession

LATENCY_REASON = (
    "an NPU hand-off is timed on the device after the vendor compiler runs; host CPU timings would not represent it"
)


class NpuBackend(BackendBase):
    name = "npu"
    int8_form = Int8Form.symmetric_qdq  # the Q/DQ form NPU parsers read
    power_meters = ()  # no meter sees the NPU from this host: estimate only
    toolchain_packages = ("onnxruntime",)

    def available(self) -> bool:
        return OnnxRuntimeBackend().available()

    def version(self) -> str:
        return f"onnx hand-off (validated with onnxruntime {OnnxRuntimeBackend().version()})"

    def compile(self, job: CompileJob) -> Artifact:
        import onnx

        onnx.save(job.model, str(job.out_dir / "model.onnx"))
        return Artifact(self.name, job.precision, "model.onnx", ("model.onnx",))

    def host_latency_reason(self, artifact: Artifact) -> str:
        return LATENCY_REASON

    def open(self, artifact: Artifact, bundle_dir: Path) -> OnnxRuntimeSession:
        return OnnxRuntimeSession(bundle_dir / artifact.entry)
