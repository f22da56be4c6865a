"""The target catalogue: targets.yaml parsed and validated, op profiles resolved into op sets.

targets.yaml -> Catalog(profiles, targets) -> Target(op_set, backend, budgets, tolerances)
"""

from __future__ import annotations

import enum
import os
import re
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from vdeploy import callable_as_api
from vdeploy.errors import TargetError
from vdeploy.graph_passes.ops import OpId, OpSet  # noqa: F401  (re-exported: the op-set types live there)

DEFAULT_CATALOG = Path(__file__).with_name("targets.yaml")
RESERVED_NAMES = frozenset({"all"})  # `--target all` selects every target: no target or alias may be called that
MAX_PROFILE_CHAIN = 32  # op profiles built on one another through `base:`
OP_NAME = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_.\-]*::)?[A-Za-z_][A-Za-z0-9_]*")  # Op or domain::Op


class Precision(str, enum.Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"
    int8 = "int8"


class LatencyStat(str, enum.Enum):
    p50 = "p50"
    p90 = "p90"
    p99 = "p99"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OpProfile(_Strict):
    source: str = Field(min_length=1, description="vendor document the list comes from")
    base: str | None = None
    ops: list[str] = []
    add: list[str] = []
    remove: list[str] = []
    # ops the vendor documents neither list nor exclude: coverage says "unknown" (not "unsupported") for them and
    # legalization does not rely on them; not inherited through base
    unknown: list[str] = []

    @field_validator("ops", "add", "remove", "unknown")
    @classmethod
    def _op_names(cls, names: list[str]) -> list[str]:
        bad = [name for name in names if not OP_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not an op name (write Op or domain::Op)")
        return names


class Tolerance(_Strict):
    """Numerics gate against the PyTorch reference, per output."""

    max_rel_err: StrictFloat = Field(gt=0, lt=1)  # max |out - ref| / max |ref|
    min_cosine: StrictFloat = Field(gt=0, le=1)
    min_top1_agreement: StrictFloat | None = Field(default=None, ge=0, le=1)
    max_top1_drop: StrictFloat | None = Field(default=None, ge=0)  # points of labelled top-1 (needs --eval-data)


class Budgets(_Strict):  # Strict*: `latency_ms: true` is refused, not read as 1.0
    latency_ms: StrictFloat | None = Field(default=None, gt=0)
    latency_stat: LatencyStat = LatencyStat.p50
    power_w: StrictFloat | None = Field(default=None, gt=0)
    energy_mj: StrictFloat | None = Field(default=None, gt=0)  # energy per inference
    size_mb: StrictFloat | None = Field(default=None, gt=0)
    peak_mem_mb: StrictFloat | None = Field(default=None, gt=0)  # peak resident memory of the process running it
    sram_kb: StrictFloat | None = Field(default=None, gt=0)  # on-chip SRAM / tensor arena (MCU NPUs; from the compiler)
    flash_kb: StrictFloat | None = Field(default=None, gt=0)  # read-only model storage (MCU NPUs; from the compiler)


class Hardware(_Strict):
    """Device figures for the analytic latency/power estimate; each target cites where they come from."""

    peak_gops: dict[Precision, StrictFloat]  # dense peak, giga-ops per second (a MAC counts as 2 ops)
    mem_bw_gbs: StrictFloat = Field(gt=0)  # DRAM bandwidth, GB/s
    idle_w: StrictFloat = Field(ge=0)
    active_w: StrictFloat = Field(gt=0)  # board/package power at full load
    efficiency: StrictFloat = Field(default=0.3, gt=0, le=1)  # achieved fraction of peak; calibrated where measured
    source: str = Field(min_length=1)


class PrecisionOptions(_Strict):
    keep_fp32: list[
        str
    ] = []  # FP16 builds: op types, node names or rule families kept FP32 (default: see precision.py)
    int8_everywhere: StrictBool = (
        False  # INT8 builds quantize every layer (NPU profiles); else transformer-aware placement
    )
    int8_keep_float: list[str] = []  # ONNX node names never quantized


class RuntimePick(str, enum.Enum):
    declared = "declared"  # the target's own backend unless the request names another runtime
    measured = "measured"  # FP32 builds time every runtime on its legal graph and keep the faster (deploy/runtimes.py)


class Runtime(_Strict):
    """Another runtime the target may use (the runtime lever): backend, op profile and options of its own. The same
    backend may appear with other options under another name (e.g. session settings)."""

    name: str | None = None  # default: the backend's name
    backend: str
    op_profile: str
    options: dict[str, Any] = {}
    precisions: list[Precision] | None = None  # None: the target's; else a subset of them
    source: str = Field(min_length=1)

    @property
    def key(self) -> str:
        return self.name or self.backend


class TargetSpec(_Strict):
    description: str
    aliases: list[str] = []
    backend: str  # a row of vdeploy.backends' table
    op_profile: str
    fallback: StrictBool = False  # may ops outside the profile run on a fallback device (e.g. CPU)?
    opset: StrictInt = Field(default=18, ge=13, le=23)
    precisions: list[Precision]
    default_precision: Precision = Precision.fp32
    budgets: Budgets = Budgets()
    tolerances: dict[Precision, Tolerance]
    precision_options: PrecisionOptions = PrecisionOptions()
    hardware: Hardware | None = None
    options: dict[str, Any] = {}  # the backend's own settings, validated by its options_model
    allow_estimates: StrictBool = False  # may an analytic estimate pass a latency/power budget? (else: unverified)
    handoff: str | None = None  # the vendor step that finishes the build on its toolchain (NPU targets)
    sources: list[str] = []
    runtimes: list[Runtime] = []  # runtimes besides `backend` the target may use (deploy/runtimes.py)
    runtime_pick: RuntimePick = RuntimePick.declared

    @model_validator(mode="after")
    def _precisions_consistent(self) -> TargetSpec:
        if self.default_precision not in self.precisions:
            raise ValueError(f"default_precision {self.default_precision.value} is not in precisions")
        missing = [p.value for p in self.precisions if p not in self.tolerances]
        if missing:
            raise ValueError(f"no tolerances for precision(s) {', '.join(missing)}")
        from vdeploy.backends import backend_class, backend_names

        for backend, options, where in (
            (self.backend, self.options, "options"),
            *((r.backend, r.options, f"runtimes.{r.key}.options") for r in self.runtimes),
        ):
            if backend not in backend_names():
                raise ValueError(f"unknown backend {backend!r} (known: {', '.join(backend_names())})")
            try:
                backend_class(backend)().parse_options(options)
            except ValidationError as exc:
                first = exc.errors()[0]
                raise ValueError(f"{where}.{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
        names = [self.backend, *(r.key for r in self.runtimes)]
        if len(set(names)) != len(names):
            raise ValueError(f"a runtime name is used twice: {', '.join(names)}")
        for runtime in self.runtimes:
            extra = set(runtime.precisions or ()) - set(self.precisions)
            if extra:
                raise ValueError(f"runtimes.{runtime.key}: precisions {sorted(p.value for p in extra)} not offered")
        return self


class CatalogFile(_Strict):
    op_profiles: dict[str, OpProfile]
    targets: dict[str, TargetSpec]


class Target(NamedTuple):
    name: str
    spec: TargetSpec
    op_set: frozenset  # frozenset[OpId]
    unknown: frozenset = frozenset()  # frozenset[OpId]: ops the profile's sources leave open (OpProfile.unknown)
    runtime: str = ""  # the runtime it was switched to (deploy/runtimes.py); "": its own backend

    @property
    def backend(self) -> str:
        return self.spec.backend

    def backend_options(self, overrides: dict[str, Any] | None = None) -> Any:
        """The target's typed backend options, with the command line's overrides for keys the backend has."""
        from vdeploy.backends import backend_class

        backend = backend_class(self.spec.backend)()
        raw = dict(self.spec.options)
        fields = getattr(backend.options_model, "model_fields", {})
        raw.update({k: v for k, v in (overrides or {}).items() if k in fields and v is not None})
        return backend.parse_options(raw)


class Catalog:
    def __init__(self, data: CatalogFile, path: Path):
        self.data = data
        self.path = path
        self._check_references()

    def _check_references(self) -> None:
        for name in self.data.op_profiles:
            self._resolve(name, ())
        seen: dict[str, str] = {}
        for name, spec in self.data.targets.items():
            for profile in (spec.op_profile, *(r.op_profile for r in spec.runtimes)):
                if profile not in self.data.op_profiles:
                    raise TargetError(
                        f"{self.path}: target {name!r} names unknown op_profile {profile!r}",
                        f"known profiles: {', '.join(sorted(self.data.op_profiles))}",
                    )
            for key in (name, *spec.aliases):
                if key in RESERVED_NAMES or not key.strip():
                    raise TargetError(
                        f"{self.path}: target {name!r}: the name {key!r} cannot be selected "
                        + ("(`--target all` means every target)" if key in RESERVED_NAMES else "(it is empty)"),
                        "rename it",
                    )
                if key in seen:
                    raise TargetError(
                        f"{self.path}: name {key!r} is used by targets {seen[key]!r} and {name!r}",
                        "give each target and alias a unique name",
                    )
                seen[key] = name

    def _resolve(self, name: str, chain: tuple[str, ...]) -> frozenset:
        """The op set of a profile: its `base:` chain walked without recursion (a long chain or a cycle is a
        TargetError, never a RecursionError), then ops/add/remove applied from the root down."""
        profiles = []
        while name is not None:
            if name in chain:
                raise TargetError(f"{self.path}: op profile cycle {' -> '.join((*chain, name))}", "remove the cycle")
            if len(chain) >= MAX_PROFILE_CHAIN:
                raise TargetError(
                    f"{self.path}: op profile {chain[0]!r} has over {MAX_PROFILE_CHAIN} profiles under it (base:)",
                    "flatten the chain: list the ops in fewer profiles",
                )
            profile = self.data.op_profiles.get(name)
            if profile is None:
                raise TargetError(
                    f"{self.path}: op profile {chain[-1]!r} has unknown base {name!r}",
                    f"known profiles: {', '.join(sorted(self.data.op_profiles))}",
                )
            profiles.append(profile)
            chain, name = (*chain, name), profile.base
        ops: set = set()
        for profile in reversed(profiles):
            ops |= {OpId.parse(o) for o in (*profile.ops, *profile.add)}
            ops -= {OpId.parse(o) for o in profile.remove}
        return frozenset(ops)

    @cached_property
    def names(self) -> list[str]:
        return list(self.data.targets)

    def aliases(self) -> dict[str, str]:
        return {alias: name for name, spec in self.data.targets.items() for alias in spec.aliases}

    def op_set(self, profile: str) -> frozenset:
        return self._resolve(profile, ())

    def get(self, name: str) -> Target:
        canonical = self.aliases().get(name, name)
        spec = self.data.targets.get(canonical)
        if spec is None:
            known = ", ".join(self.names)
            raise TargetError(f"unknown target {name!r}", f"known targets: {known} (see `vdeploy targets`)")
        op_set = self._resolve(spec.op_profile, ())
        unknown = frozenset(OpId.parse(o) for o in self.data.op_profiles[spec.op_profile].unknown) - op_set
        return Target(canonical, spec, op_set, unknown)

    def __iter__(self):
        return (self.get(name) for name in self.names)


def load_catalog(path: str | os.PathLike | None = None) -> Catalog:
    """Read and validate a targets.yaml (default: $VDEPLOY_TARGETS, else the shipped catalogue)."""
    from vdeploy.yaml_strict import YamlRefused, load_yaml

    path = Path(path or os.environ.get("VDEPLOY_TARGETS") or DEFAULT_CATALOG)
    try:
        raw = load_yaml(path)
    except OSError as exc:
        raise TargetError(f"cannot read target catalogue {path}: {exc.strerror}", "check the path") from None
    except YamlRefused as exc:
        raise TargetError(
            f"{path}: {exc}", "fix the file (catalogues are read strictly: see docs/refusals.md)"
        ) from None
    try:
        data = CatalogFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        where = f"{loc}: " if loc else ""
        got = f" (got {first['input']!r})" if isinstance(first.get("input"), (bool, int, float, str)) else ""
        raise TargetError(
            f"{path}: {where}{first['msg'].removeprefix('Value error, ')}{got}",
            f"{exc.error_count()} problem(s); see the schema in deploy/targets.py",
        ) from None
    return Catalog(data, path)


callable_as_api(__name__, "targets")  # vdeploy.targets() lists the catalogue; vdeploy.targets stays this module
