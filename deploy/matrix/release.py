"""The release file: models × targets × precisions, with their data and budget overrides, as cells.

release.yaml -> Release (pydantic, paths resolved against the file's folder) -> cells(release) -> [Cell]
A cell is one single build: its BuildRequest is what `vdeploy build MODEL --target T ...` would make, so its bundle
lands where that build puts it (OUT/<model-stem>-<target>/; OUT/<precision>/... when a pair has several precisions).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vdeploy.errors import VdeployError

# build options a release may set per model or release-wide (BuildRequest fields a file can express)
BUILD_OPTIONS = (
    "precision",
    "input_shape",
    "trust_pickle",
    "calib",
    "mean",
    "std",
    "int8_sensitive",
    "eval_data",
    "max_top1_drop",
    "min_cosine",
    "min_top1_agreement",
    "tune_trials",
    "tuning_db",
    "input_specs",
    "arch",
    "samples",
    "warmup",
    "iters",
)
PATH_OPTIONS = ("calib", "eval_data")


class ReleaseFileError(VdeployError):
    kind = "release"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TargetEntry(_Strict):
    name: str
    precisions: list[str] | None = None  # default: the release's, else the target's default precision
    budgets: dict[str, Any] = {}
    device: str | None = None  # run `vdeploy validate` on a Ray worker that offers resource device:<device>


class ModelEntry(_Strict):
    path: str  # a model file (relative to the release file), timm:NAME, or with `arch` the weights file
    name: str | None = None  # label in the summary (default: the file's stem)
    arch: str | None = None  # timm:NAME | package.module:factory (then `path` is the weights file)
    input_shape: list[int] | None = None
    calib: str | None = None
    eval_data: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    trust_pickle: bool = False
    precisions: list[str] | None = None
    budgets: dict[str, Any] = {}
    targets: list[str] | None = None  # a subset of the release's targets (default: all of them)
    options: dict[str, Any] = {}  # further build options by name (BUILD_OPTIONS)

    @property
    def label(self) -> str:
        return self.name or (self.path if self.path.startswith("timm:") else Path(self.path).stem)


class Resources(_Strict):
    num_cpus: float = Field(default=1, gt=0)  # per build task
    memory_gb: float = Field(default=2, gt=0)  # per build task (Ray's memory resource: admission, not a hard cap)


class FitSettings(_Strict):
    """`fit:` in a release file: each cell runs `vdeploy build --fit` with these (docs/fit.md)."""

    budget_s: float = Field(default=300, gt=0)  # --fit-budget-s per cell
    levers: list[str] | None = None  # --fit-levers (None: every lever the target and model allow)


class Release(_Strict):
    name: str = "release"
    out: str = "bundles"
    catalog: str | None = None  # a targets.yaml (default: $VDEPLOY_TARGETS or the shipped one)
    fit: bool | FitSettings = False  # true, or {budget_s, levers}: each cell searches for the plan that fits
    precisions: list[str] | None = None  # release-wide: each target builds those of them it offers
    budgets: dict[str, Any] = {}  # release-wide budget overrides (targets' and models' override these)
    options: dict[str, Any] = {}  # release-wide build options (BUILD_OPTIONS)
    python_path: list[str] = []  # folders holding code that `arch: package.module:factory` or pickles import
    resources: Resources = Resources()
    retries: int = Field(default=2, ge=0)  # re-runs of a task whose worker process died
    timeout_s: float | None = Field(default=None, gt=0)  # a build running longer is stopped (its worker killed)
    targets: list[TargetEntry]
    models: list[ModelEntry]

    @field_validator("targets", mode="before")
    @classmethod
    def _plain_names(cls, value):
        return [{"name": v} if isinstance(v, str) else v for v in value or []]


@dataclass(frozen=True)
class Cell:
    """One build of the release."""

    model: str  # the model's label
    target: str
    precision: str | None  # None: the target's default
    request: Any  # vdeploy.pipeline.BuildRequest
    device: str | None = None
    fit: dict | None = None  # {"budget_s", "levers"}: the cell is a --fit build

    @property
    def bundle(self) -> Path:
        """Where the build puts its bundle: OUT/<model file stem or timm name>-<target>, as a single build does."""
        model = self.request.model
        stem = model.split(":", 1)[1] if model.startswith("timm:") else Path(model).stem
        return Path(self.request.out_dir) / f"{stem}-{self.target}"

    @property
    def cell_id(self) -> str:
        return "__".join(
            part.replace("/", "_").replace(":", "_") for part in (self.model, self.target, self.precision or "default")
        )


def _fit_settings(fit: bool | FitSettings) -> dict | None:
    from vdeploy.fit.search import LEVER_NAMES

    if fit is False:
        return None
    settings = FitSettings() if fit is True else fit
    unknown = sorted(set(settings.levers or ()) - set(LEVER_NAMES))
    if unknown:
        raise ReleaseFileError(f"fit.levers: unknown lever(s) {unknown}", f"levers: {', '.join(LEVER_NAMES)}")
    return settings.model_dump()


def load_release(path: str | Path) -> tuple[Release, Path]:
    """(Release, the release file's folder); one-line ReleaseFileError when the file is missing or malformed."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ReleaseFileError(f"cannot read release file {path}: {exc.strerror}", "check the path") from None
    except yaml.YAMLError as exc:
        raise ReleaseFileError(
            f"{path} is not valid YAML ({' '.join(str(exc).split())[:200]})", "fix the YAML syntax"
        ) from None
    if not isinstance(raw, dict):
        raise ReleaseFileError(
            f"{path} is not a release file (expected a mapping with models: and targets:)",
            "see docs/release-pipeline.md",
        )
    try:
        release = Release(**raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ReleaseFileError(f"{path}: {where}: {first['msg']}", "see docs/release-pipeline.md") from None
    if not release.models or not release.targets:
        raise ReleaseFileError(f"{path} lists no models or no targets", "add at least one of each")
    return release, path.resolve().parent


def cells(release: Release, base: Path, out: Path | None = None) -> list[Cell]:
    """Every build of the release, checked against the catalogue before anything runs."""
    from vdeploy.pipeline import BuildRequest
    from vdeploy.targets import Budgets, load_catalog

    catalog_path = _resolve(base, release.catalog) if release.catalog else None
    catalog = load_catalog(catalog_path)
    out_root = out or _resolve(base, release.out)
    fit = _fit_settings(release.fit)
    entries = {t.name: t for t in release.targets}
    result: list[Cell] = []
    for model in release.models:
        names = model.targets or list(entries)
        unknown = [n for n in names if n not in entries]
        if unknown:
            raise ReleaseFileError(
                f"model {model.label}: targets {unknown} are not in the release's targets:",
                "list them under targets: first",
            )
        pairs = []
        for name in names:
            entry, target = entries[name], catalog.get(entries[name].name)
            offered = [p.value for p in target.spec.precisions]
            if model.precisions or entry.precisions:
                precisions = list(model.precisions or entry.precisions)  # explicit: an unoffered one is an error
                missing = [p for p in precisions if p not in offered]
                if missing:
                    raise ReleaseFileError(
                        f"model {model.label}: target {target.name} offers no precision {missing}",
                        f"{target.name} offers {', '.join(offered)}",
                    )
            elif release.precisions:
                precisions = [p for p in release.precisions if p in offered]
            else:
                precisions = [None]
            pairs += [(entry, target, p, len(precisions) > 1) for p in precisions]
        for entry, target, precision, several in pairs:
            budgets = {**release.budgets, **entry.budgets, **model.budgets}
            bad = sorted(set(budgets) - set(Budgets.model_fields))
            if bad:
                raise ReleaseFileError(
                    f"unknown budget(s) {bad} for {model.label} × {target.name}",
                    f"budgets: {', '.join(Budgets.model_fields)}",
                )
            _checked(Budgets, {**target.spec.budgets.model_dump(), **budgets}, f"{model.label}: budgets")
            options = _options(release.options, model, base)
            if precision is not None:
                options["precision"] = precision
            cell_out = out_root / precision if several else out_root
            fields_ = dict(model=_model_path(model, base), targets=(target.name,), out_dir=cell_out, **options)
            request = replace(
                _checked(BuildRequest, fields_, f"model {model.label}: options"),  # a value of the wrong type: one line
                budgets=tuple(sorted(budgets.items())),
                catalog=catalog_path,
            )
            result.append(Cell(model.label, target.name, precision, request, entry.device, fit))
    _check_unique(result)
    return result


def _checked(kind, values: dict, where: str):
    """`kind` validated from `values` (pydantic, strict about types): one-line ReleaseFileError for a bad value."""
    from pydantic import TypeAdapter

    try:
        return TypeAdapter(kind).validate_python(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"] if not str(p).startswith(("int", "str", "float")))
        raise ReleaseFileError(f"{where}: {name}: {first['msg']}", "see docs/release-pipeline.md") from None


def _options(release_options: dict, model: ModelEntry, base: Path) -> dict:
    options = {**release_options, **model.options}
    for key in ("arch", "input_shape", "calib", "eval_data", "mean", "std"):
        if getattr(model, key) is not None:
            options[key] = getattr(model, key)
    if model.trust_pickle:
        options["trust_pickle"] = True
    bad = sorted(set(options) - set(BUILD_OPTIONS))
    if bad:
        raise ReleaseFileError(
            f"model {model.label}: unknown build option(s) {bad}", f"options: {', '.join(BUILD_OPTIONS)}"
        )
    for key in PATH_OPTIONS:
        if options.get(key) is not None:
            options[key] = _resolve(base, options[key])
    if options.get("tuning_db"):
        options["tuning_db"] = tuple(_resolve(base, p) for p in options["tuning_db"])
    for key in ("input_shape", "mean", "std", "input_specs"):
        if options.get(key) is not None:
            options[key] = tuple(options[key])
    return options


def _model_path(model: ModelEntry, base: Path) -> str:
    if model.path.startswith("timm:"):
        return model.path
    path = _resolve(base, model.path)
    if not path.exists():
        raise ReleaseFileError(f"model {model.label}: {path} not found", "paths are relative to the release file")
    return str(path)


def _resolve(base: Path, path: str | Path) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _check_unique(all_cells: list[Cell]) -> None:
    """Two cells writing one bundle (two models with the same file stem) would overwrite each other."""
    seen: dict[Path, str] = {}
    for cell in all_cells:
        if cell.bundle in seen:
            raise ReleaseFileError(
                f"models {seen[cell.bundle]} and {cell.model} would both write {cell.bundle}", "rename one model file"
            )
        seen[cell.bundle] = cell.model
