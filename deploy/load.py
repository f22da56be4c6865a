"""Load a model file (or a timm architecture) without running code from it unless the user trusts it.

path -> sniff format from content -> LoadedModel(format, eager callable | ONNX proto, input specs)
Formats: torch.export (.pt2), TorchScript, ONNX, pickled nn.Module (--trust-pickle only), `timm:NAME`.
"""

from __future__ import annotations

import enum
import hashlib
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from vdeploy.errors import ModelLoadError, first_line

TIMM_PREFIX = "timm:"
MAX_ARCHIVE_BYTES = 64 << 30  # declared uncompressed size of a .pt2 / TorchScript archive
BOMB_RATIO, BOMB_MIN_BYTES = 100, 256 << 20  # a compressed member inflating > 100x to > 256 MiB: a zip bomb


class ModelFormat(str, enum.Enum):
    exported_program = "torch.export"
    torchscript = "torchscript"
    onnx = "onnx"
    pickle = "pickle"
    timm = "timm"
    arch = "arch"  # --arch + --weights: an architecture from code, a state dict from the file


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"


@dataclass(frozen=True)
class LoadedModel:
    source: str
    stem: str
    format: ModelFormat
    sha256: str | None
    inputs: tuple[InputSpec, ...]  # empty when the file records no shape
    module: Any = None  # an eager callable (nn.Module / ScriptModule / ExportedProgram.module())
    program: Any = None  # torch.export.ExportedProgram, when that is the format
    onnx_model: Any = None  # onnx.ModelProto, when that is the format
    mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # preprocessing, when recorded

    @property
    def is_torch(self) -> bool:
        return self.format is not ModelFormat.onnx


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model(source: str, *, trust_pickle: bool = False) -> LoadedModel:
    if source.startswith(TIMM_PREFIX):
        return _load_timm(source[len(TIMM_PREFIX) :])
    path = Path(source)
    if not path.is_file():
        raise ModelLoadError(
            f"model file not found: {source}", "check the path (or use timm:NAME for a timm architecture)"
        )
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{source} is empty", "re-save the model")
    with path.open("rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":
        return _load_zip(path, trust_pickle)
    if head[:1] == b"\x80":
        return _load_pickle(path, trust_pickle)
    return _load_onnx(path)


def _loaded(path: Path, fmt: ModelFormat, inputs=(), **kw) -> LoadedModel:
    return LoadedModel(str(path), path.stem, fmt, sha256_file(path), tuple(inputs), **kw)


def _load_zip(path: Path, trust_pickle: bool) -> LoadedModel:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            _refuse_bomb(path, archive.infolist())  # by the sizes the archive declares, before inflating anything
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ModelLoadError(f"{path} is truncated or corrupt ({exc})", "re-save or re-download the model") from None
    if bad is not None:
        raise ModelLoadError(f"{path} is corrupt (member {bad} fails its CRC check)", "re-save the model")
    tails = {name.split("/", 1)[-1] for name in names}
    if "archive_format" in tails or any(t.startswith("models/") for t in tails):
        return _load_exported(path)
    if "constants.pkl" in tails or any(t.startswith("code/") for t in tails):
        return _load_torchscript(path)
    if "data.pkl" in tails:
        return _load_pickle(path, trust_pickle)
    raise ModelLoadError(f"{path} is a zip archive but not a PyTorch model", "pass a .pt2, TorchScript, ONNX file")


def _refuse_bomb(path: Path, infos: list[zipfile.ZipInfo]) -> None:
    for info in infos:
        ratio = info.file_size / max(info.compress_size, 1)
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > BOMB_MIN_BYTES and ratio > BOMB_RATIO:
            raise ModelLoadError(
                f"{path} member {info.filename} declares {info.file_size / 2**30:.3g} GiB compressed into "
                f"{info.compress_size / 2**20:.3g} MiB ({ratio:.0f}x): refused as a zip bomb, nothing was inflated",
                "PyTorch writes its archives uncompressed: re-save the model with torch.export.save / torch.jit.save",
            )
    total = sum(info.file_size for info in infos)
    if total > MAX_ARCHIVE_BYTES:
        raise ModelLoadError(
            f"{path} declares {total / 2**30:.3g} GiB uncompressed, over the {MAX_ARCHIVE_BYTES / 2**30:.0f} GiB "
            "limit for a model archive",
            "check the file; an edge model this large will not fit the device",
        )


def _load_exported(path: Path) -> LoadedModel:
    import torch

    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # torch raises many types for damaged archives
        raise ModelLoadError(
            f"{path} could not be loaded as a torch.export program: {first_line(exc)}",
            "re-export it with torch.export.save",
        ) from None
    return _loaded(
        path, ModelFormat.exported_program, exported_inputs(program), module=program.module(), program=program
    )


def exported_inputs(program) -> list[InputSpec]:
    """The static user inputs of a torch.export program."""
    user_inputs = set(program.graph_signature.user_inputs)
    return [
        InputSpec(node.name, tuple(int(d) for d in node.meta["val"].shape), _dtype_name(node.meta["val"].dtype))
        for node in program.graph.nodes
        if node.op == "placeholder" and node.name in user_inputs and _is_static(node.meta.get("val"))
    ]


def _load_torchscript(path: Path) -> LoadedModel:
    import torch

    try:
        module = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:
        raise ModelLoadError(
            f"{path} could not be loaded as TorchScript: {first_line(exc)}", "re-save it with torch.jit.save"
        ) from None
    return _loaded(path, ModelFormat.torchscript, module=module)


def _load_pickle(path: Path, trust_pickle: bool) -> LoadedModel:
    import torch

    if not trust_pickle:
        try:
            with warnings.catch_warnings():  # torch warns about protocol versions; the error says enough
                warnings.simplefilter("ignore")
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise ModelLoadError(
                f"{path} holds pickled Python objects; loading it would run code from the file",
                "pass --trust-pickle only if you trust its source, or save the model with torch.export.save",
            ) from None
        except Exception as exc:
            raise ModelLoadError(f"{path} is truncated or corrupt: {first_line(exc)}", "re-save the model") from None
        raise ModelLoadError(
            f"{path} holds only tensors ({type(obj).__name__}), not a model architecture",
            "save the model itself with torch.export.save or torch.jit.save",
        )
    try:
        module = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelLoadError(f"{path} could not be unpickled: {first_line(exc)}", "re-save the model") from None
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(
            f"{path} unpickles to {type(module).__name__}, not an nn.Module",
            "save the module (torch.save(model)) or use torch.export.save",
        )
    return _loaded(path, ModelFormat.pickle, module=module.eval())


def _load_onnx(path: Path) -> LoadedModel:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)  # external data only once its paths are checked
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise ModelLoadError(
            f"{path} is not a recognised model file (not .pt2, TorchScript, pickle or ONNX: {first_line(exc)})",
            "check that the file is complete and in a supported format",
        ) from None
    if not model.graph.node or not model.graph.output or not model.opset_import:
        raise ModelLoadError(
            f"{path} is not a recognised model file (no ONNX graph in it)",
            "check that the file is complete and in a supported format",
        )
    _load_external_data(model, path)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ModelLoadError(f"{path} is not a valid ONNX model: {first_line(exc)}", "re-export the model") from None
    return _loaded(path, ModelFormat.onnx, onnx_inputs(model), onnx_model=model)


def _load_external_data(model, path: Path) -> None:
    """Tensors stored in external files are read only from files inside the model's folder: an absolute location,
    a `..` or a symbolic link out of the folder is refused (onnx would raise its own ValidationError)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    folder = path.parent.resolve()  # where onnx.load looks: beside the path as given
    for tensor in (t for t in _get_all_tensors(model) if uses_external_data(t)):
        location = ExternalDataInfo(tensor).location or ""
        where = folder / location
        if not location or PurePosixPath(location).is_absolute() or PureWindowsPath(location).is_absolute():
            problem = "is an absolute path" if location else "is empty"
        elif ".." in PurePosixPath(location.replace("\\", "/")).parts:
            problem = "climbs out of the model's folder (..)"
        elif not where.resolve().is_relative_to(folder):
            problem = f"leads out of the model's folder through a symbolic link (to {where.resolve()})"
        elif not where.is_file():
            problem = "does not exist beside the model"
        else:
            continue
        raise ModelLoadError(
            f"{path}: tensor {tensor.name!r} keeps its data in an external file whose location {location!r} {problem}",
            "keep external data files in the model's folder: onnx.save(model, path, save_as_external_data=True, "
            "location='model.data'), and copy the .data file with the model",
        )
    try:
        onnx.load_external_data_for_model(model, str(folder))
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        raise ModelLoadError(
            f"{path}: its external data cannot be read: {first_line(exc)}", "re-save the model"
        ) from None


def onnx_inputs(model) -> list[InputSpec]:
    """The statically shaped real inputs (not initializers) of an onnx.ModelProto."""
    import onnx

    initializers = {t.name for t in model.graph.initializer}
    inputs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            elem = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
            inputs.append(InputSpec(value.name, tuple(d.dim_value for d in dims), str(elem)))
    return inputs


def _load_timm(name: str) -> LoadedModel:
    from vdeploy.timm_compat import import_timm

    try:
        timm = import_timm()
    except ImportError as exc:
        raise ModelLoadError(f"timm is not importable here ({exc})", "pip install timm, or pass a model file") from None
    if name not in timm.list_models():
        raise ModelLoadError(f"timm has no architecture {name!r}", "see timm.list_models() for the names")
    import torch

    with torch.random.fork_rng():  # seeded random init: the same weights in every process (--plan, the build cache)
        torch.manual_seed(0)
        module = timm.create_model(name, pretrained=False).eval()
    cfg = module.pretrained_cfg or {}
    shape = (1, *cfg.get("input_size", (3, 224, 224)))
    mean_std = (tuple(cfg["mean"]), tuple(cfg["std"])) if "mean" in cfg and "std" in cfg else None
    return LoadedModel(
        f"timm:{name}", name, ModelFormat.timm, None, (InputSpec("input", shape),), module=module, mean_std=mean_std
    )


def _is_static(val) -> bool:
    return val is not None and hasattr(val, "shape") and all(isinstance(d, int) for d in val.shape)


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")
