"""Errors a user can act on. Each carries one line saying what went wrong and one saying what to do."""

from __future__ import annotations

import re


class VdeployError(Exception):
    """A failure with a user-facing message and a hint; the CLI prints both on one line and exits 1."""

    kind = "error"

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = f"{self.kind}: {self.message}" + (f" — {self.hint}" if self.hint else "")
        return " ".join(text.split())  # one line, whatever the runtime put in the message

    def as_dict(self) -> dict:
        return {"error": self.kind, "message": self.message, "hint": self.hint}


class ModelLoadError(VdeployError):
    kind = "model"


class TargetError(VdeployError):
    kind = "target"


class ExportError(VdeployError):
    kind = "export"


class UnsupportedOpsError(VdeployError):
    kind = "coverage"


class BackendError(VdeployError):
    kind = "backend"


class UsageError(VdeployError):
    """A call that names an option or value that does not exist (the CLI's exit 2 has typer's own message)."""

    kind = "usage"


# ONNX Runtime's prefix and C++ source location: "[ONNXRuntimeError] : 1 : FAIL : /src/model.cc:256 ns::F(args) "
_RUNTIME_NOISE = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : |\S+\.(?:cc|cpp|h):\d+ [\w:~<>]+\(.*?\) ")


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (runtimes raise walls of text), or its type name; ONNX
    Runtime's error prefix and C++ source location dropped, and a long line cut at a word with an ellipsis."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    line = _RUNTIME_NOISE.sub("", lines[0].strip()).strip()
    if len(line) <= limit:
        return line
    cut = line[:limit].rsplit(" ", 1)[0]
    return (cut if len(cut) > limit // 2 else line[:limit]) + " …"


class InputSpecError(VdeployError):
    """Validation inputs: a bad --input-spec, or seeded inputs the model cannot take (NaN in the reference)."""

    kind = "inputs"
