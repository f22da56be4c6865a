"""plan.json: the chosen plan as data (schema vdeploy.plan/1); `vdeploy build --plan plan.json` replays it.

Choices + target + model -> plan document (written beside the manifest) -> read_plan(path, target) -> Choices,
checked against the target: every lever value must be one the target and model allow, else one clear error.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vdeploy.errors import VdeployError
from vdeploy.fit.forms import form
from vdeploy.fit.levers import Choices
from vdeploy.prune_stage import HeadPruning
from vdeploy.runtimes import offers, runtime_names

SCHEMA = "vdeploy.plan/1"


class PlanError(VdeployError):
    kind = "plan"


class _ChoicesModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    runtime: str
    precision: str
    int8_sensitive: int | str = "auto"
    forms: dict[str, str] = {}
    input_size: tuple[int, int] | None = None
    prune_heads: dict | None = None  # {"keep": {block id: heads kept}} (a --fit plan records the heads it removed)


class _PlanModel(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    schema_: str = Field(alias="schema")
    target: str
    choices: _ChoicesModel


def plan_document(choices: Choices, target, loaded, *, made_by: str, fits: bool | None, pruning=None) -> dict:
    """`pruning`: the build's prune_stage.Pruning; its applied keep plan is recorded, so a replay removes exactly
    those heads without measuring importance again."""
    if pruning is not None:
        choices = dataclasses.replace(choices, prune_heads=HeadPruning.of({"keep": pruning.result.plan()}))
    return {
        "schema": SCHEMA,
        "target": target.name,
        "model": {"path": loaded.source, "sha256": loaded.sha256},
        "choices": choices.to_dict(),
        "made_by": made_by,
        "fits": fits,
    }


def read_plan(path: Path, target) -> Choices:
    """The Choices a plan file holds, validated for `target` (the catalogue's target)."""
    where = f"--plan {path}"
    try:
        raw = json.loads(Path(path).read_text())
    except OSError as exc:
        raise PlanError(f"cannot read {where}: {exc.strerror}", "pass the plan.json a --fit build wrote") from None
    except ValueError as exc:
        raise PlanError(f"{where} is not JSON ({exc})", "pass the plan.json a --fit build wrote") from None
    try:
        doc = _PlanModel.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        hint = f"schema {SCHEMA}: target, choices{{runtime, precision}}"
        raise PlanError(f"{where}: {loc}: {first['msg']}", hint) from None
    if doc.schema_ != SCHEMA:
        raise PlanError(f"{where} has schema {doc.schema_!r}", f"this vdeploy reads {SCHEMA}")
    if doc.target not in (target.name, *target.spec.aliases):
        raise PlanError(
            f"{where} was made for target {doc.target}, not {target.name}", f"build with --target {doc.target}"
        )
    c = doc.choices
    choices = Choices(
        runtime=c.runtime,
        precision=c.precision,
        int8_sensitive=c.int8_sensitive,
        forms=tuple(sorted(c.forms.items())),
        input_size=c.input_size,
        prune_heads=_pruning(c.prune_heads, where),
    )
    check_choices(choices, target, where)
    return choices


def _pruning(value: dict | None, where: str) -> HeadPruning | None:
    if value is None:
        return None
    try:
        return HeadPruning.of(value)
    except VdeployError as exc:
        raise PlanError(f"{where}: prune_heads: {exc.message}", exc.hint) from None


def check_choices(choices: Choices, target, where: str) -> None:
    """Every value one the target offers; raises PlanError naming the first that is not."""
    runtimes = runtime_names(target)
    if choices.runtime not in runtimes:
        raise PlanError(f"{where}: target {target.name} has no runtime {choices.runtime!r}", f"runtimes: {runtimes}")
    if choices.precision not in ("fp32", "fp16", "bf16", "int8") or not offers(
        target, choices.runtime, choices.precision
    ):
        raise PlanError(
            f"{where}: runtime {choices.runtime} of {target.name} does not offer precision {choices.precision!r}",
            "choose a precision the target lists (vdeploy targets)",
        )
    sensitive = choices.int8_sensitive
    if not (sensitive == "auto" or (isinstance(sensitive, int) and sensitive >= 0)):
        raise PlanError(f"{where}: int8_sensitive must be 'auto' or a count >= 0, not {sensitive!r}")
    for family, name in choices.forms:
        try:
            form(family, name)
        except VdeployError as exc:
            raise PlanError(f"{where}: {exc.message}", exc.hint) from None
    if choices.input_size is not None and min(choices.input_size) < 8:
        raise PlanError(f"{where}: input_size {list(choices.input_size)} is too small", "use at least 8 x 8")
