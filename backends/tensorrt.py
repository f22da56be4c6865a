"""TensorRT: a strongly typed ONNX for the TensorRT ONNX parser; the engine is built where TensorRT and a GPU are.

legal ONNX (FP16 + FP32 islands, or symmetric Q/DQ INT8) -> model.onnx + build_engine.sh (the exact trtexec line)
  -> tensorrt imports and sees a GPU: model.engine + timing.cache (Python API, strongly typed) -> TensorRT session
  -> otherwise: Artifact(deferred=why) -> ONNX Runtime CPU session on model.onnx (numerics only, never timed)

Precision lives in the ONNX (Casts around the FP32 islands, Q/DQ pairs), the form `trtexec --stronglyTyped`
builds: TensorRT 11 has no --fp16/--int8 builder flags, and TensorRT 10 offers strong typing as an opt-in flag.
Only a TensorRT whose API lacks STRONGLY_TYPED (8.x) gets the weakly typed builder flags instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vdeploy.backends.base import Artifact, BackendBase, CompileJob, Int8Form
from vdeploy.backends.onnxruntime import OnnxRuntimeSession
from vdeploy.errors import BackendError

ONNX, ENGINE, CACHE, SCRIPT = "model.onnx", "model.engine", "timing.cache", "build_engine.sh"
NOT_INSTALLED = "tensorrt not installed on this host: engine build deferred to build_engine.sh on the device"
NO_GPU = "tensorrt {version} imports but sees no CUDA GPU: engine build deferred to build_engine.sh on the device"
NO_ENGINE_LATENCY = (
    "no TensorRT engine was built on this host: latency is measured on the device "
    "(`vdeploy validate` there); host CPU timings would not represent the GPU"
)
JETPACK_TRTEXEC_DIR = "/usr/src/tensorrt/bin"  # JetPack installs trtexec here, off the default PATH
# Weakly typed builds (TensorRT without STRONGLY_TYPED): the builder precision flags each precision needs.
# Q/DQ INT8 also allows FP16 so the layers left float can use it, as trtexec's --int8 --fp16.
WEAK_FLAGS = {"fp32": (), "fp16": ("FP16",), "int8": ("INT8", "FP16")}


def trtexec_command(precision: str = "fp16") -> str:
    """The strongly typed trtexec line of build_engine.sh (run in the bundle directory)."""
    extra = " --noTF32" if precision == "fp32" else ""  # FP32 means FP32: no TF32 MatMul/Conv
    return (
        f"trtexec --onnx={ONNX} --stronglyTyped --saveEngine={ENGINE} --timingCacheFile={CACHE}{extra} --skipInference"
    )


def weakly_typed_command(precision: str) -> str:
    """trtexec for TensorRT releases whose trtexec lacks --stronglyTyped (8.x): builder precision flags."""
    flags = "".join(f" --{f.lower()}" for f in WEAK_FLAGS[precision])
    return f"trtexec --onnx={ONNX}{flags} --saveEngine={ENGINE} --timingCacheFile={CACHE} --skipInference"


def build_script(precision: str) -> str:
    """build_engine.sh: bash that builds model.engine and timing.cache beside itself on the device."""
    what = {
        "fp16": "FP16 compute with FP32 LayerNorm/Softmax/logits islands behind Casts",
        "fp32": "FP32",
        "int8": "INT8 Q/DQ (symmetric, zero point 0); the layers between stay FP32",
    }[precision]
    return "\n".join(
        [
            "#!/usr/bin/env bash",
            "# Builds the TensorRT engine for this vdeploy bundle on the device (Jetson or NVIDIA GPU host).",
            f"# model.onnx is strongly typed, precision {precision}: {what}.",
            "# The precision lives in the graph, so no --fp16/--int8 flags (TensorRT 11 removed them).",
            "# TensorRT 8.x (no --stronglyTyped) only, weakly typed with builder precision flags instead:",
            f"#   {weakly_typed_command(precision)}",
            "# Afterwards `vdeploy validate .` checks the engine against reference_io.npz, times it and reads",
            "# tegrastats/NVML; `trtexec --loadEngine=model.engine` times it alone.",
            "set -euo pipefail",
            'cd "$(dirname "$0")"',
            f'PATH="$PATH:{JETPACK_TRTEXEC_DIR}"',
            trtexec_command(precision),
            "",
        ]
    )


def write_build_script(out_dir: Path, precision: str) -> Path:
    path = Path(out_dir) / SCRIPT
    path.write_text(build_script(precision))
    path.chmod(0o755)
    return path


@dataclass(frozen=True)
class BuildPlan:
    """How the Python API builds the network for one TensorRT version."""

    version: str
    strongly_typed: bool
    network_flags: tuple[str, ...]  # NetworkDefinitionCreationFlag names
    builder_flags: tuple[str, ...]  # BuilderFlag names to set (weakly typed builds only)
    clear_flags: tuple[str, ...] = ()  # BuilderFlag names to clear


def major_version(version: str) -> int:
    match = re.match(r"\s*(\d+)", version)
    if not match:
        raise BackendError(f"cannot read the TensorRT version {version!r}", "report the tensorrt.__version__ string")
    return int(match[1])


def plan_build(version: str, precision: str, has_strongly_typed: bool) -> BuildPlan:
    """TensorRT >= 11: always strongly typed (the creation flag is accepted and ignored, precision flags are gone).
    9.x/10.x: the STRONGLY_TYPED flag is opt-in and used. Without it (8.x): EXPLICIT_BATCH + builder flags."""
    major = major_version(version)
    no_tf32 = ("TF32",) if precision == "fp32" else ()
    if major >= 11 or has_strongly_typed:
        return BuildPlan(version, True, ("STRONGLY_TYPED",) if has_strongly_typed else (), (), no_tf32)
    return BuildPlan(version, False, ("EXPLICIT_BATCH",), WEAK_FLAGS[precision], no_tf32)


def tensorrt_module():
    """The tensorrt module, or None when it does not import (only libs without the Python bindings, or none)."""
    try:
        import tensorrt
    except (ImportError, OSError, RuntimeError):  # OSError: libnvinfer/libnvonnxparser missing
        return None
    return tensorrt


def engine_host() -> tuple[Any, str]:
    """(tensorrt module, "") when this host can build and run engines, else (None, why not)."""
    trt = tensorrt_module()
    if trt is None:
        return None, NOT_INSTALLED
    try:
        ok = trt.Builder(trt.Logger(trt.Logger.ERROR)) is not None  # fails without a CUDA device
    except Exception:  # noqa: BLE001 (pybind raises TypeError/RuntimeError depending on the release)
        ok = False
    return (trt, "") if ok else (None, NO_GPU.format(version=getattr(trt, "__version__", "?")))


def parser_errors(parser) -> list[str]:
    """One line per ONNX parser error, naming the node (index, name, op) where the TensorRT release reports it."""
    lines = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        where = [f"node {error.node()}"] if error.node() >= 0 else []
        for attr in ("node_name", "node_operator"):
            value = getattr(error, attr, lambda: "")()
            if value:
                where.append(str(value))
        lines.append(f"{' '.join(where) or 'graph'}: {error.desc()}")
    return lines


def build_engine(trt, onnx_path: Path, precision: str) -> Artifact:
    """Parse model.onnx and build model.engine + timing.cache beside it (an existing cache is reused)."""
    bundle = onnx_path.parent
    logger = trt.Logger(trt.Logger.WARNING)
    plan = plan_build(trt.__version__, precision, hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"))
    builder = trt.Builder(logger)
    flags = sum(1 << int(getattr(trt.NetworkDefinitionCreationFlag, f)) for f in plan.network_flags)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = parser_errors(parser)
        raise BackendError(
            f"the TensorRT {plan.version} ONNX parser reported {len(errors)} error(s): " + "; ".join(errors[:5]),
            "run `vdeploy coverage` for the op table; the op profile "
            "tensorrt-onnx-parser lists what the parser documents",
        )
    config = builder.create_builder_config()
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in plan.clear_flags:
        if hasattr(trt.BuilderFlag, name):
            config.clear_flag(getattr(trt.BuilderFlag, name))
    cache_path = bundle / CACHE
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendError(
            f"TensorRT {plan.version} could not build an engine from {onnx_path.name}",
            f"run `bash {SCRIPT}` in the bundle with trtexec --verbose to see the failing layer",
        )
    (bundle / ENGINE).write_bytes(bytes(serialized))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    mode = "strongly typed" if plan.strongly_typed else "weakly typed: " + "+".join(plan.builder_flags or ("FP32",))
    return Artifact("tensorrt", precision, ENGINE, (ENGINE,), (("build", mode), ("tensorrt", plan.version)))


class TensorRtBackend(BackendBase):
    name = "tensorrt"
    int8_form = Int8Form.symmetric_qdq  # strongly typed Q/DQ (TensorRT 11 has no --int8 flag)
    power_meters = ("tegrastats", "nvml")
    toolchain_packages = ("tensorrt",)
    run_options = {"build": r"[A-Za-z0-9 :+_-]+", "tensorrt": r"[A-Za-z0-9.+_-]+"}  # recorded, not passed on

    def host_latency_reason(self, artifact: Artifact) -> str | None:
        """Timed only when the artifact is an engine this host runs (what open() returns a TensorRT session for)."""
        if artifact.entry == ENGINE and not artifact.deferred and tensorrt_module() is not None:
            return None
        return NO_ENGINE_LATENCY

    def available(self) -> bool:
        """The ONNX hand-off needs only onnx; building and running the engine is decided per host."""
        return True

    def version(self) -> str:
        trt = tensorrt_module()
        return trt.__version__ if trt is not None else "not installed"

    def compile(self, job: CompileJob) -> Artifact:
        import onnx

        model, precision, out_dir = job.model, job.precision, Path(job.out_dir)
        onnx.save(model, str(out_dir / ONNX))
        write_build_script(out_dir, precision)
        trt, why = engine_host()
        if trt is None:
            return Artifact(self.name, precision, ONNX, (ONNX,), deferred=why)
        return build_engine(trt, out_dir / ONNX, precision)

    def prepare(self, artifact: Artifact, bundle_dir: Path) -> Artifact:
        """`vdeploy validate` on a host with TensorRT and a GPU: use the bundle's engine if this TensorRT loads it,
        else build it for a deferred bundle (same code as compile). Elsewhere the artifact is returned unchanged."""
        trt, _ = engine_host()
        if trt is None:
            return artifact
        bundle_dir = Path(bundle_dir)
        engine = bundle_dir / ENGINE
        if engine.exists() and _loads(trt, engine):
            return (
                artifact
                if not artifact.deferred
                else Artifact(
                    self.name,
                    artifact.precision,
                    ENGINE,
                    (ENGINE,),
                    (("build", "found in the bundle"), ("tensorrt", trt.__version__)),
                )
            )
        if not artifact.deferred:  # an engine the manifest hashes, built for another GPU or TensorRT
            raise BackendError(
                f"TensorRT {trt.__version__} cannot load the bundle's {ENGINE} (built by another "
                "TensorRT version or for another GPU)",
                f"rebuild the bundle on this machine with "
                f"`vdeploy build`, or run {SCRIPT} here and use model.engine outside vdeploy",
            )
        return build_engine(trt, bundle_dir / ONNX, artifact.precision)

    def open(self, artifact: Artifact, bundle_dir: Path):
        bundle_dir = Path(bundle_dir)
        trt = tensorrt_module() if artifact.entry == ENGINE else None
        if trt is not None and not artifact.deferred:
            return TensorRtSession(trt, bundle_dir / ENGINE)
        return OnnxRuntimeSession(bundle_dir / ONNX)  # numerics of the strongly typed graph, CPU


def _loads(trt, engine: Path) -> bool:
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    return runtime.deserialize_cuda_engine(engine.read_bytes()) is not None


class TensorRtSession:
    """A minimal engine runner: torch CUDA tensors as I/O buffers, execute_async_v3 on one stream.
    Exercised only where TensorRT imports and a GPU is present (tests skip elsewhere)."""

    def __init__(self, trt, engine_path: Path):
        import torch

        if not torch.cuda.is_available():
            raise BackendError(
                "the TensorRT session needs a CUDA build of torch for its I/O buffers",
                "install JetPack's torch wheel (Jetson) or a CUDA torch; or time the engine with "
                "`trtexec --loadEngine=model.engine`",
            )
        self._torch = torch
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self._engine is None:
            raise BackendError(
                f"TensorRT {trt.__version__} cannot load {engine_path.name} (built by another "
                "TensorRT or for another GPU)",
                "delete it and run `vdeploy validate` to rebuild",
            )
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = trt.TensorIOMode.INPUT
        self.input_names = [n for n in names if self._engine.get_tensor_mode(n) == inputs]
        self._outputs = {}
        for name in (n for n in names if self._engine.get_tensor_mode(n) != inputs):
            dtype = torch.from_numpy(np.empty(0, trt.nptype(self._engine.get_tensor_dtype(name)))).dtype
            self._outputs[name] = torch.empty(tuple(self._engine.get_tensor_shape(name)), dtype=dtype, device="cuda")
            self._context.set_tensor_address(name, self._outputs[name].data_ptr())
        self._stream = torch.cuda.Stream()
        self._held: list = []

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self._held = [self._torch.from_numpy(np.ascontiguousarray(feeds[n])).to("cuda") for n in self.input_names]
        for name, tensor in zip(self.input_names, self._held):
            self._context.set_input_shape(name, tuple(tensor.shape))
            self._context.set_tensor_address(name, tensor.data_ptr())
        self._torch.cuda.current_stream().synchronize()  # the host-to-device copies ran on the default stream
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise BackendError("TensorRT execute_async_v3 failed", "rerun with VDEPLOY_DEBUG=1")
        self._stream.synchronize()
        return [t.cpu().numpy() for t in self._outputs.values()]

    def sync(self) -> None:
        self._stream.synchronize()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._context = self._engine = None
        self._outputs = {}
        self._held = []
