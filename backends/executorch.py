"""ExecuTorch with the XNNPACK delegate for ARM (and x86) CPUs: the PyTorch model -> model.pte + run_pte.py.

job.source --program_file--> model.pt2 --arm venv worker executorch_xnnpack.py--> [int8: XNNPACKQuantizer, PT2E
  calibration] -> to_edge_transform_and_lower(XnnpackPartitioner) -> model.pte (the same file runs on aarch64)
open(): executorch.runtime in the arm venv through a persistent worker (ServeSession): real numerics of the .pte on
this host; its timings count only when the target's CPU architecture is this host's (x86-cpu-xnnpack).
"""

from __future__ import annotations

import platform
import shutil
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

PTE, RUNNER = "model.pte", "run_pte.py"
ARCH = {"aarch64": "aarch64", "arm64": "aarch64", "x86_64": "x86_64", "amd64": "x86_64"}


class ExecuTorchOptions(BaseModel):
    """The device CPU a target means: its architecture decides whether this host's timings represent it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: str = "host"  # aarch64 | x86_64 | host (this machine)
    cpu: str = "host"  # a label for the manifest, e.g. cortex-a76
    timeout_s: float = 1800.0


class ExecuTorchBackend(BackendBase):
    name = "executorch"
    options_model: ClassVar = ExecuTorchOptions
    int8_form = Int8Form.toolchain  # the XNNPACK quantizer (PT2E) calibrates the PyTorch program itself

    def available(self) -> bool:
        return toolchains().installed(TOOLCHAIN)

    def version(self) -> str:
        return toolchains().versions(TOOLCHAIN).get("executorch", "not installed")

    def toolchain(self) -> dict[str, str]:
        return toolchains().versions(TOOLCHAIN)

    def compile(self, job: CompileJob) -> Artifact:
        if job.precision not in ("fp32", "int8"):
            raise BackendError(
                f"the ExecuTorch XNNPACK target builds fp32 or int8 (asked for {job.precision})",
                "build with --precision fp32 or int8",
            )
        options: ExecuTorchOptions = job.options or ExecuTorchOptions()
        samples = stacked(job.samples)
        with tempfile.TemporaryDirectory(prefix="vdeploy-executorch-") as tmp:
            work = Path(tmp)
            job.progress("saving the PyTorch program for the arm toolchain (torch.export)")
            request = {
                "program": str(program_file(job.source, samples, work / "model.pt2")),
                "samples": str(write_inputs(samples, work / "samples.npz")),
                "out_dir": str(job.out_dir.resolve()),  # the worker runs in a scratch folder
                "pte": PTE,
                "precision": job.precision,
            }
            if job.precision == "int8":
                request["calibration"] = str(write_inputs(ordered(job.calibration().inputs), work / "calib.npz"))
            reply = toolchains().call(
                TOOLCHAIN,
                "executorch_xnnpack",
                request,
                timeout_s=options.timeout_s,
                progress=job.progress,
                log=job.out_dir / "executorch_worker.log",
            )
        shutil.copyfile(Path(__file__).with_name("executorch_files") / RUNNER, job.out_dir / RUNNER)
        placement = reply["placement"]
        details = {
            "placement": placement,
            "quantization": reply["info"],
            "compile_s": reply["compile_s"],
            "device": {"arch": _arch(options.arch), "cpu": options.cpu},
        }
        return Artifact(self.name, job.precision, PTE, (PTE, RUNNER), details=tuple(details.items()))

    def open(self, artifact: Artifact, bundle_dir: Path) -> ServeSession:
        return ServeSession("executorch", bundle_dir / artifact.entry, ())

    def host_latency_reason(self, artifact: Artifact) -> str | None:
        device = (artifact.detail("device") or {}).get("arch", _host_arch())
        if device == _host_arch():
            return None
        return (
            f"the .pte targets {device} and this host is {_host_arch()}: its numerics are checked here with "
            "the x86 ExecuTorch runtime (same program, same XNNPACK operators), its latency only on the device "
            "(python3 run_pte.py there, or vdeploy validate)"
        )


def _host_arch() -> str:
    return ARCH.get(platform.machine().lower(), platform.machine().lower())


def _arch(value: str) -> str:
    return _host_arch() if value == "host" else ARCH.get(value, value)
