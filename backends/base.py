"""The backend protocol: compile a legalized ONNX model into an artifact, open it, run it.

onnx.ModelProto --compile--> Artifact (files in the bundle) --open--> Session.run(feeds) -> outputs
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class Artifact:
    backend: str
    precision: str
    entry: str  # the file a runtime opens, relative to the bundle directory
    files: tuple[str, ...]  # every artifact file, relative to the bundle directory
    options: tuple[tuple[str, str], ...] = ()  # runtime settings the session must use (e.g. inference precision)
    deferred: str = ""  # why the final artifact is not built here (e.g. no TensorRT): the verdict stays unverified
    details: tuple[tuple[str, object], ...] = ()  # how it was built, for the manifest (e.g. TVM tuning)

    def option(self, key: str) -> str | None:
        return dict(self.options).get(key)

    def to_dict(self) -> dict:
        return {"backend": self.backend, "precision": self.precision, "entry": self.entry,
                "files": list(self.files), "options": dict(self.options), "deferred": self.deferred,
                "details": dict(self.details)}

    @classmethod
    def from_dict(cls, data: dict) -> "Artifact":
        return cls(data["backend"], data["precision"], data["entry"], tuple(data["files"]),
                   tuple(sorted(data.get("options", {}).items())), data.get("deferred", ""),
                   tuple(data.get("details", {}).items()))


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

    def __enter__(self) -> "Session": ...

    def __exit__(self, *exc) -> None: ...


class Backend(Protocol):
    name: str
    def host_latency_reason(self, artifact: Artifact) -> str | None:
        """Why timing `artifact` on this host would not represent the device (then it is not timed); None if it would."""

    def available(self) -> bool: ...

    def version(self) -> str: ...

    def compile(self, model, precision: str, out_dir: Path, *, target=None, request=None, progress=None) -> Artifact:
        """Write the artifact's files into out_dir. target/request/progress: for backends with build settings."""

    def open(self, artifact: Artifact, bundle_dir: Path) -> Session: ...
