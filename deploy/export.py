"""torch -> ONNX, dynamo first, legacy exporter as the fallback; record what was actually produced.

LoadedModel + example inputs -> ExportResult(onnx.ModelProto, exporter, opset, notes)
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from vdeploy.errors import ExportError, first_line
from vdeploy.load import LoadedModel, ModelFormat

LEGACY_MAX_OPSET = 17  # what the legacy exporter reliably reaches (ENVIRONMENT.md)


@dataclass(frozen=True)
class ExportResult:
    model: object  # onnx.ModelProto
    exporter: str  # "dynamo" | "legacy" | "none" (the input was ONNX already)
    opset: int  # the default-domain opset the file really has
    notes: tuple[str, ...] = ()


def default_opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def export_onnx(loaded: LoadedModel, example_inputs: tuple, opset: int) -> ExportResult:
    if loaded.format is ModelFormat.onnx:
        return ExportResult(loaded.onnx_model, "none", default_opset(loaded.onnx_model))
    notes = []
    if loaded.format is not ModelFormat.torchscript:
        try:
            model = _dynamo(loaded, example_inputs, opset)
            got = default_opset(model)
            if got != opset:
                notes.append(f"dynamo exporter asked for opset {opset}, produced {got}")
            return ExportResult(model, "dynamo", got, tuple(notes))
        except Exception as exc:  # the exporter raises many types; the legacy path gets its chance
            notes.append(f"dynamo exporter failed ({first_line(exc)}); fell back to the legacy exporter")
    legacy_opset = min(opset, LEGACY_MAX_OPSET)
    try:
        model = _legacy(loaded, example_inputs, legacy_opset)
    except Exception as exc:
        raise ExportError(
            f"ONNX export failed with both exporters: {first_line(exc)}",
            "export the model to ONNX yourself and pass the .onnx file",
        ) from None
    got = default_opset(model)
    if got != opset:
        notes.append(f"legacy exporter produced opset {got} (asked for {opset})")
    return ExportResult(model, "legacy", got, tuple(notes))


def _dynamo(loaded: LoadedModel, example_inputs: tuple, opset: int):
    import torch

    subject = loaded.program if loaded.program is not None else loaded.module
    with _quiet():
        program = torch.onnx.export(
            subject, example_inputs, dynamo=True, opset_version=opset, verbose=False, external_data=False
        )
    return program.model_proto


def _legacy(loaded: LoadedModel, example_inputs: tuple, opset: int):
    import onnx
    import torch

    names = [f"input_{i}" for i in range(len(example_inputs))] if len(example_inputs) > 1 else ["input"]
    with tempfile.TemporaryDirectory() as tmp, _quiet():
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            loaded.module,
            example_inputs,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=names,
            do_constant_folding=True,
        )
        return onnx.load(str(path))


@contextlib.contextmanager
def _quiet():
    """The exporters print progress and warnings; keep stdout clean for --json."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield
