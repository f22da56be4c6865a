"""Resume: a cell's key is a hash of everything its build reads; an unchanged key with a verifying bundle is skipped.

cell -> key = sha256(model/weights/data file hashes, target spec + op set, build options, toolchain versions)
OUT/.matrix/cells/<cell>.json holds {key, record} of the last finished build; skip when the key matches and the
bundle's files still match their manifest hashes (deploy/validate/rerun.py's verification); the skipped cell's
figures are read again from that verified manifest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields
from pathlib import Path

from vdeploy.build_cache import path_hash, plain
from vdeploy.errors import VdeployError

STATE_DIR = ".matrix"
KEYED_OUT = (
    "model",
    "targets",
    "out_dir",
    "catalog",
    "source",
    "example_inputs",
    "calib",
    "eval_data",
    "tuning_db",
    "rule_specs",
)


def cell_key(cell) -> str:
    """The hex key of a cell: changes whenever an input of its build changes."""
    from vdeploy.backends import backend_class
    from vdeploy.manifest import toolchain
    from vdeploy.targets import load_catalog

    request = cell.request
    target = load_catalog(request.catalog).get(cell.target)
    record = {
        "model": _model_id(request.model),
        "calib": path_hash(request.calib),
        "eval_data": path_hash(request.eval_data),
        "tuning_db": [path_hash(p) for p in request.tuning_db],
        "target": [target.name, target.backend, target.spec.model_dump(mode="json"), sorted(map(str, target.op_set))],
        "options": {f.name: plain(getattr(request, f.name)) for f in fields(request) if f.name not in KEYED_OUT},
        "toolchain": {**toolchain(), **backend_class(target.backend)().toolchain()},
        "device": cell.device,
        "fit": cell.fit,
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def state_path(out_root: Path, cell) -> Path:
    return Path(out_root) / STATE_DIR / "cells" / f"{cell.cell_id}.json"


def cached_record(out_root: Path, cell, key: str) -> dict | None:
    """The last record of this cell when its key is unchanged and its bundle verifies, else None."""
    from vdeploy.matrix.task import summary_of
    from vdeploy.validate.rerun import _read, _verify_files

    path = state_path(out_root, cell)
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    record = state.get("record") or {}
    if (
        state.get("key") != key
        or record.get("status") not in ("pass", "fail", "unverified")
        or not record.get("bundle")
    ):
        return None
    bundle = Path(record["bundle"])
    try:
        manifest = _read(bundle)
        _verify_files(bundle, manifest)
    except VdeployError:
        return None
    return {**record, **summary_of(manifest, bundle)}  # the figures as the verified bundle states them


def save_record(out_root: Path, cell, key: str, record: dict) -> None:
    path = state_path(out_root, cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "record": record}, indent=2, default=str))
    tmp.replace(path)


def _model_id(model: str) -> str:
    if model.startswith("timm:"):
        import importlib.metadata

        try:
            return f"{model}@timm-{importlib.metadata.version('timm')}"
        except importlib.metadata.PackageNotFoundError:
            return model
    return path_hash(Path(model)) or model
