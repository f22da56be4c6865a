"""The backend contract: compile a legalized ONNX model into an artifact, open it, run it.

CompileJob(lowered model, precision, target, typed options, samples, calibration, source) --compile--> Artifact
  --open--> Session.run(feeds) -> outputs

A backend is one file: a `BackendBase` subclass that states its own decisions as class attributes (typed options,
INT8 form, power meters, toolchain packages) and overrides only what differs from the defaults here.
"""

from __future__ import annotations

import contextlib
import enum
import importlib
import importlib.metadata
import signal
import threading
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from pydantic import BaseModel


@dataclass(frozen=True)
class Artifact:
    backend: str
    precision: str
    entry: str  # the file a runtime opens, relative to the bundle directory
    files: tuple[str, ...]  # every artifact file, relative to the bundle directory
    options: tuple[tuple[str, str], ...] = ()  # runtime settings the session must use (e.g. inference precision)
    deferred: str = ""  # why the final artifact is not built here (e.g. no TensorRT): the verdict stays unverified
    details: tuple[tuple[str, object], ...] = ()  # how it was built, for the manifest (see DETAIL_KEYS)

    def option(self, key: str) -> str | None:
        return dict(self.options).get(key)

    def detail(self, key: str) -> Any:
        return dict(self.details).get(key)

    def to_dict(self) -> dict:
        return {
            "backend": self.backend,
            "precision": self.precision,
            "entry": self.entry,
            "files": list(self.files),
            "options": dict(self.options),
            "deferred": self.deferred,
            "details": dict(self.details),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Artifact:
        return cls(
            data["backend"],
            data["precision"],
            data["entry"],
            tuple(data["files"]),
            tuple(sorted(data.get("options", {}).items())),
            data.get("deferred", ""),
            tuple(data.get("details", {}).items()),
        )


# Artifact.details keys the plan reads (all optional; anything else is shown as-is in the manifest):
#   "estimate":  {"latency_ms": float, "source": "rknn-estimate" | "vela-estimate" | ..., **figures (cycles, sram_kb)}
#   "placement": {"source": str, "counts": {"NPU": n, "CPU": m}, "layers": [{"name", "op", "device", "reason"}]}
#   "simulated": {"outputs": "<file>.npz" (keys out0, out1, ... stacked over job.samples), "source": "<simulator>"}
DETAIL_KEYS = ("estimate", "placement", "simulated")


class Int8Form(str, enum.Enum):
    """How the precision stage hands an INT8 build to a backend."""

    ort_qdq = "ort_qdq"  # ONNX Q/DQ from ONNX Runtime's static quantizer (asymmetric activations)
    symmetric_qdq = "symmetric_qdq"  # symmetric Q/DQ, the form TensorRT's strongly typed builder and NPU parsers read
    nncf_openvino = "nncf_openvino"  # an openvino.Model quantized by NNCF
    toolchain = "toolchain"  # the graph stays FP32; the vendor compiler quantizes from job.calibration


@dataclass(frozen=True)
class CompileJob:
    """Everything a backend may use to build its artifact. Only model/precision/out_dir matter to simple backends."""

    model: Any  # the lowered legal graph: onnx.ModelProto (an openvino.Model for NNCF INT8)
    precision: str  # fp32 | fp16 | bf16 | int8
    out_dir: Path  # the bundle's temporary directory: write the artifact files here
    target: Any = None  # vdeploy.targets.Target (name, spec, op_set)
    options: Any = None  # an instance of the backend's options_model (None when it has none)
    progress: Callable[[str], None] = lambda _: None
    samples: Mapping[str, np.ndarray] = field(default_factory=dict)  # validation inputs {name: [N, *shape]}
    calibration: Callable[[], Any] | None = None  # () -> vdeploy.calibration.CalibrationData (INT8 only)
    source: Any = None  # vdeploy.load.LoadedModel, for toolchains that compile from PyTorch
    float_layers: tuple[str, ...] = ()  # INT8: ONNX node names the placement keeps in higher precision


def runtime_module(name: str):
    """A runtime's Python module, or None where it is not installed. Imported on first use, never at CLI start."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


class Session(Protocol):
    input_names: Sequence[str]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...

    def sync(self) -> None: ...

    def __enter__(self) -> Session: ...

    def __exit__(self, *exc) -> None: ...


class BackendBase:
    """Defaults for every backend; subclasses set `name` and implement available/version/compile/open."""

    name: ClassVar[str]
    options_model: ClassVar[type[BaseModel] | None] = None  # pydantic model of the target's `options:` section
    int8_form: ClassVar[Int8Form] = Int8Form.ort_qdq
    power_meters: ClassVar[tuple[str, ...]] = ("rapl", "tegrastats")  # meters that see the device, best first
    toolchain_packages: ClassVar[tuple[str, ...]] = ()  # distributions whose versions the manifest records
    # Artifact.options `vdeploy validate` takes back from a bundle's manifest: key -> regex its value must match.
    # Anything else is refused (options reach the runtime; OpenVINO would honour a CACHE_DIR written there).
    run_options: ClassVar[Mapping[str, str]] = {}

    def available(self) -> bool:
        raise NotImplementedError

    def version(self) -> str:
        raise NotImplementedError

    def compile(self, job: CompileJob) -> Artifact:
        raise NotImplementedError

    def open(self, artifact: Artifact, bundle_dir: Path) -> Any:  # a Session (context manager with run/sync)
        raise NotImplementedError

    def host_latency_reason(self, artifact: Artifact) -> str | None:
        """Why timing `artifact` on this host would not represent the device (then it is not timed), else None."""
        return None

    def prepare(self, artifact: Artifact, bundle_dir: Path) -> Artifact:
        """Finish a deferred build where this host can (TensorRT: build the engine); default: nothing to do."""
        return artifact

    def analyze_layers(self, job: CompileJob, artifact: Artifact, sample: int = 0) -> dict | None:
        """`vdeploy debug`: the toolchain's own per-layer numerics of this artifact (rknn-toolkit2 accuracy_analysis)
        as {"source", "layers": [{"name", "op", "onnx_node", "cos_entire", "cos_single", ...}]}; None: none."""
        return None

    def run_many(self, session: Session, samples: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
        """Outputs for every sample; a backend whose sessions start a process per call batches them here."""
        return [session.run(sample) for sample in samples]

    def toolchain(self) -> dict[str, str]:
        """Versions of the packages this backend builds with, for the manifest's toolchain record."""
        versions = {}
        for package in self.toolchain_packages:
            try:
                versions[package] = importlib.metadata.version(package)
            except importlib.metadata.PackageNotFoundError:
                continue
        return versions

    def parse_options(self, raw: Mapping[str, Any]) -> Any:
        """The target's `options:` section as the typed model (ValueError/ValidationError when it does not fit)."""
        if self.options_model is None:
            if raw:
                raise ValueError(f"backend {self.name} takes no options (got {', '.join(map(str, raw))})")
            return None
        for key, value in raw.items():  # pydantic's lax mode reads true as 1 / 1.0: a number must be written as one
            field = self.options_model.model_fields.get(key)
            if isinstance(value, bool) and field is not None and not _admits_bool(field.annotation):
                raise ValueError(f"options.{key}: a boolean ({value}) where {_type_name(field.annotation)} is expected")
        return self.options_model.model_validate(dict(raw))


def _admits_bool(annotation) -> bool:
    return annotation is bool or annotation is Any or bool in typing.get_args(annotation)


def _type_name(annotation) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


class InterruptWatch(contextlib.AbstractContextManager):
    """Runtimes that call back into Python wrap a Ctrl-C landing there into their own exception (OpenVINO:
    OpConversionFailure "... KeyboardInterrupt ..."). Inside this block SIGINT/SIGTERM handlers also record the
    signal; `reraise()` raises it again as the interrupt it was, so the CLI says "interrupted", not "cannot convert".
    Outside the main thread (no handlers can be set there) only the exception's text is read."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.seen: list[int] = []
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> InterruptWatch:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                handler = signal.getsignal(sig)
                if callable(handler):  # only Python handlers (SIGINT's default raises KeyboardInterrupt)
                    self.previous[sig] = handler
                    signal.signal(sig, self._record)
        return self

    def _record(self, signum, frame) -> None:
        self.seen.append(signum)
        self.previous[signum](signum, frame)

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def reraise(self, exc: BaseException) -> None:
        """Raise the interrupt hidden in `exc` (a signal seen in the block, or KeyboardInterrupt in its text)."""
        if self.seen:
            self.previous[self.seen[0]](self.seen[0], None)  # the handler raises again, outside the runtime
        if self.seen or "KeyboardInterrupt" in str(exc):
            raise KeyboardInterrupt from None
