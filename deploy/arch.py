"""--arch / --weights: build an architecture from code, then load a state dict (or training checkpoint) into it.

'timm:NAME' | 'package.module:factory' -> nn.Module (imports and runs that code: the user's own)
weights file -> torch.load(weights_only=True) -> state dict (itself, or a checkpoint's 'state_dict' / 'model' entry;
a DataParallel 'module.' prefix stripped) -> strict key and shape match -> LoadedModel (input shape: timm's
pretrained_cfg, else --input-shape)
"""

from __future__ import annotations

import importlib
import os
import pickle
import sys
import warnings
from pathlib import Path

from vdeploy.errors import ModelLoadError, first_line
from vdeploy.load import TIMM_PREFIX, InputSpec, LoadedModel, ModelFormat, sha256_file

CHECKPOINT_KEYS = ("state_dict", "model")  # where training scripts (Lightning, timm, DeiT, ...) keep the weights
SHOW = 5  # keys listed per kind in a mismatch message


def load_arch(arch: str, weights: str, *, progress=lambda _: None) -> LoadedModel:
    path = Path(weights)
    if not path.is_file():
        raise ModelLoadError(f"weights file not found: {weights}", "check the path given as MODEL or --weights")
    module, input_shape, mean_std = _build(arch)
    state = state_dict_of(_read(path), path)
    check_fits(module, state, arch, path)
    module.load_state_dict(state, strict=True)
    inputs = (InputSpec("input", input_shape),) if input_shape else ()
    return LoadedModel(
        str(path), path.stem, ModelFormat.arch, sha256_file(path), inputs, module=module.eval(), mean_std=mean_std
    )


def _build(arch: str):
    """(nn.Module, input shape or None, (mean, std) or None) for 'timm:NAME' or 'package.module:factory'."""
    import torch

    if arch.startswith(TIMM_PREFIX):
        from vdeploy.timm_compat import import_timm

        name = arch[len(TIMM_PREFIX) :]
        try:
            timm = import_timm()
        except ImportError as exc:
            raise ModelLoadError(f"timm is not importable here ({exc})", "pip install timm") from None
        if name not in timm.list_models():
            raise ModelLoadError(f"timm has no architecture {name!r}", "see timm.list_models() for the names")
        module = timm.create_model(name, pretrained=False)
        cfg = module.pretrained_cfg or {}
        mean_std = (tuple(cfg["mean"]), tuple(cfg["std"])) if "mean" in cfg and "std" in cfg else None
        return module, (1, *cfg.get("input_size", (3, 224, 224))), mean_std
    module_name, _, factory_name = arch.partition(":")
    if not module_name or not factory_name:
        raise ModelLoadError(
            f"--arch {arch!r} is neither timm:NAME nor package.module:factory",
            "e.g. --arch timm:resnet18 or --arch mypkg.models:build_model",
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # the user's package, as `python -m` would see it
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except ImportError as exc:
        raise ModelLoadError(
            f"cannot import {module_name!r} for --arch: {first_line(exc)}",
            "run from the directory that holds the package, or install it",
        ) from None
    except AttributeError:
        raise ModelLoadError(
            f"{module_name} has no {factory_name!r}", "name a function or class that builds the model"
        ) from None
    try:
        module = factory()
    except Exception as exc:  # the user's code: any error
        raise ModelLoadError(
            f"--arch {arch}: {factory_name}() raised {type(exc).__name__}: {first_line(exc)}",
            "the factory must build the model with no arguments",
        ) from None
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(
            f"--arch {arch}: {factory_name}() returned {type(module).__name__}, not an nn.Module", "return the model"
        )
    return module, None, None


def _read(path: Path):
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ModelLoadError(
            f"{path} holds Python objects besides tensors; loading them would run code",
            "save only the weights: torch.save(model.state_dict(), path)",
        ) from None
    except Exception as exc:
        raise ModelLoadError(
            f"{path} is not a readable weights file: {first_line(exc)}",
            "save it with torch.save(model.state_dict(), path)",
        ) from None


def state_dict_of(obj, path: Path) -> dict:
    """The tensors of a state dict, or of a checkpoint's 'state_dict' / 'model' entry; 'module.' prefix removed."""
    import torch

    if isinstance(obj, dict) and not _is_state_dict(obj):
        inner = next((obj[k] for k in CHECKPOINT_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            keys = ", ".join(map(str, list(obj)[:SHOW]))
            raise ModelLoadError(
                f"{path} is a dict without tensors or a {' / '.join(CHECKPOINT_KEYS)} entry (keys: {keys})",
                "save model.state_dict(), or a checkpoint {'state_dict': ...}",
            )
        obj = inner
    if not isinstance(obj, dict) or not _is_state_dict(obj):
        raise ModelLoadError(f"{path} holds {type(obj).__name__}, not a state dict", "save model.state_dict()")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _is_state_dict(obj: dict) -> bool:
    import torch

    return bool(obj) and all(isinstance(k, str) for k in obj) and any(isinstance(v, torch.Tensor) for v in obj.values())


def check_fits(module, state: dict, arch: str, path: Path) -> None:
    """Strict match: every model key present, nothing extra, every shape equal; else one line listing them."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} {list(state[k].shape)} vs {list(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    parts = [
        f"{len(items)} {label} ({', '.join(items[:SHOW])}{', ...' if len(items) > SHOW else ''})"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch(es)", shapes))
        if items
    ]
    if parts:
        raise ModelLoadError(
            f"the weights in {path} do not fit --arch {arch}: {'; '.join(parts)}",
            "check that --arch names the architecture the weights were trained with",
        )
