"""What a user hands vdeploy, as a LoadedModel: a path (or timm:NAME), an nn.Module, an ExportedProgram, a ModelProto.

request.source (in memory) -> torch.export / ONNX proto -> LoadedModel; else request.model (a path) -> load_model
"""

from __future__ import annotations

import hashlib
from typing import Any

from vdeploy.errors import ModelLoadError, first_line
from vdeploy.load import LoadedModel, ModelFormat, exported_inputs, load_model, onnx_inputs


def load_request(request, progress=lambda _: None) -> LoadedModel:
    if request.source is not None:
        return load_object(request.source, request.example_inputs, name=request.model)
    if request.arch:
        from vdeploy.arch import load_arch

        return load_arch(request.arch, request.model, progress=progress)
    return load_model(request.model, trust_pickle=request.trust_pickle)


def load_object(obj: Any, example_inputs: tuple | None, *, name: str = "model") -> LoadedModel:
    """An in-memory model: nn.Module (exported with `example_inputs`), ExportedProgram or onnx.ModelProto."""
    import onnx
    import torch

    if isinstance(obj, onnx.ModelProto):
        onnx_digest = hashlib.sha256(obj.SerializeToString()).hexdigest()
        return LoadedModel(
            f"<onnx {name}>", name, ModelFormat.onnx, onnx_digest, tuple(onnx_inputs(obj)), onnx_model=obj
        )
    if isinstance(obj, torch.nn.Module):
        if not example_inputs:
            raise ModelLoadError(
                "an in-memory nn.Module needs example_inputs to be exported",
                "pass example_inputs=(torch.randn(1, 3, 224, 224),)",
            )
        obj = obj.eval()
        try:
            program = torch.export.export(obj, tuple(example_inputs))
        except Exception as exc:  # torch.export raises many types; the first line names the construct
            raise ModelLoadError(
                f"torch.export could not capture the module: {first_line(exc)}",
                "make forward() exportable, or pass an ExportedProgram or ONNX model",
            ) from None
    elif isinstance(obj, torch.export.ExportedProgram):
        program = obj
    else:
        raise ModelLoadError(
            f"cannot build a {type(obj).__name__}",
            "pass an nn.Module, a torch.export.ExportedProgram, an onnx.ModelProto or a path",
        )
    return LoadedModel(
        f"<in-memory {name}>",
        name,
        ModelFormat.exported_program,
        program_digest(program),
        tuple(exported_inputs(program)),
        module=program.module(),
        program=program,
    )


def program_digest(program) -> str:
    """sha256 of an ExportedProgram's graph and every weight."""
    digest = hashlib.sha256(program.graph_module.code.encode())
    for key, value in sorted(program.state_dict.items()):
        digest.update(key.encode() + value.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()
