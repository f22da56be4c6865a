"""Arm Ethos-U55/U65/U85 microNPUs: the PyTorch model -> fully INT8 TFLite -> Vela -> model_vela.tflite.

job.source --program_file--> model.pt2 + calibration/sample .npz --arm venv worker ethos_u.py--> litert-torch FP32
  .tflite -> ai-edge-quantizer static INT8 (calibrated) -> model_int8.tflite -> LiteRT host run (simulated.npz)
  -> vela (accelerator config, system config, memory mode) -> model_vela.tflite + vela_summary.csv
Artifact.details: "simulated" (the INT8 graph's host numerics), "placement" (Vela's per-op NPU/CPU split with its
reasons), "estimate" (Vela's cycles, SRAM, flash and inference time: source "vela-estimate").
open(): the INT8 .tflite in LiteRT (the exact graph Vela compiled; the NPU itself is not on this host).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from vdeploy.backends.arm_toolchain import (
    TOOLCHAIN,
    ServeSession,
    ordered,
    program_file,
    stacked,
    toolchains,
    write_inputs,
)
from vdeploy.backends.base import Artifact, BackendBase, CompileJob, Int8Form
from vdeploy.errors import BackendError

VELA_MODEL, INT8_MODEL, SUMMARY, SIMULATED = (
    "model_vela.tflite",
    "model_int8.tflite",
    "vela_summary.csv",
    "simulated.npz",
)


class EthosUOptions(BaseModel):
    """Vela's command line for a target (`vela --help`; configurations in Vela's default vela.ini)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    accelerator_config: str  # e.g. ethos-u55-128, ethos-u65-256, ethos-u85-256
    system_config: str  # a [System_Config.*] section of vela.ini, e.g. Ethos_U55_High_End_Embedded
    memory_mode: str  # a [Memory_Mode.*] section, e.g. Shared_Sram, Dedicated_Sram
    optimise: str = "Performance"  # or Size
    timeout_s: float = 1800.0


class EthosUBackend(BackendBase):
    name = "ethos_u"
    options_model: ClassVar = EthosUOptions
    int8_form = Int8Form.toolchain  # Vela needs a fully INT8 TFLite: quantized in the toolchain from job.calibration
    power_meters = ()  # no meter sees a microNPU from here

    def available(self) -> bool:
        return toolchains().installed(TOOLCHAIN)

    def version(self) -> str:
        return toolchains().versions(TOOLCHAIN).get("ethos-u-vela", "not installed")

    def toolchain(self) -> dict[str, str]:
        return toolchains().versions(TOOLCHAIN)

    def compile(self, job: CompileJob) -> Artifact:
        if job.precision != "int8":
            raise BackendError(f"Ethos-U runs INT8 only (asked for {job.precision})", "build with --precision int8")
        if job.calibration is None:
            raise BackendError("the Ethos-U build needs calibration data", "pass --calib (images, .npy or .npz)")
        options: EthosUOptions = job.options
        samples = stacked(job.samples)
        calibration = job.calibration()
        with tempfile.TemporaryDirectory(prefix="vdeploy-ethos-") as tmp:
            work = Path(tmp)
            job.progress("saving the PyTorch program for the arm toolchain (torch.export)")
            request = {
                "program": str(program_file(job.source, samples, work / "model.pt2")),
                "calibration": str(write_inputs(ordered(calibration.inputs), work / "calibration.npz")),
                "samples": str(write_inputs(samples, work / "samples.npz")),
                "out_dir": str(job.out_dir.resolve()),  # the worker runs in a scratch folder
                "work_dir": str(work / "work"),
                "simulated": SIMULATED,
                "accelerator": options.accelerator_config,
                "system_config": options.system_config,
                "memory_mode": options.memory_mode,
                "optimise": options.optimise,
            }
            reply = toolchains().call(
                TOOLCHAIN,
                "ethos_u",
                request,
                timeout_s=options.timeout_s,
                progress=job.progress,
                log=job.out_dir / "vela_worker.log",
            )
        estimate = {k: v for k, v in reply["estimate"].items() if v is not None}
        placement = reply["placement"]
        counts = placement["counts"]
        estimate["npu_share_pct"] = round(100.0 * counts["NPU"] / max(1, counts["NPU"] + counts["CPU"]), 1)
        details = {
            "estimate": {
                **estimate,
                "source": "vela-estimate",
                "accelerator": options.accelerator_config,
                "system_config": options.system_config,
                "memory_mode": options.memory_mode,
            },
            "placement": placement,
            "simulated": {"outputs": SIMULATED, "source": "litert-interpreter (INT8 .tflite that Vela compiled)"},
            "quantization": reply["quantization"],
            "timings_s": reply["timings_s"],
            "vela_summary": reply["summary"],
        }
        files = (VELA_MODEL, INT8_MODEL, SUMMARY, "vela.log", SIMULATED)
        return Artifact(self.name, "int8", VELA_MODEL, files, details=tuple(details.items()))

    def open(self, artifact: Artifact, bundle_dir: Path) -> ServeSession:
        return ServeSession("litert", bundle_dir / INT8_MODEL, ())

    def host_latency_reason(self, artifact: Artifact) -> str | None:
        accelerator = (artifact.detail("estimate") or {}).get("accelerator", "Ethos-U")
        return (
            f"the {accelerator} NPU is not on this host: latency, cycles and SRAM are Vela's estimate; "
            "the host runs the INT8 .tflite in LiteRT for numerics only"
        )
