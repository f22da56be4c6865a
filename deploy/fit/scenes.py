"""Scene presets (scenes.yaml beside targets.yaml): the budgets, input and architecture a deployment scene asks for.

scenes.yaml -> Scene(budgets, input, architecture, sources) -> budget overrides and the input shape a candidate is
built at (compare.py). Data only; validated on load, every figure with its source.
"""

from __future__ import annotations

import enum
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vdeploy.errors import VdeployError

DEFAULT_SCENES = Path(__file__).resolve().parent.parent / "scenes.yaml"


class SceneError(VdeployError):
    kind = "scene"


class Architecture(str, enum.Enum):
    cnn = "cnn"
    transformer = "transformer"
    hybrid = "hybrid"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SceneInput(_Strict):
    min_side: int | None = Field(default=None, gt=0)  # H and W at least this (medical)
    side: int | None = Field(default=None, gt=0)  # H = W = side (video frames)
    frames: int | None = Field(default=None, gt=0)  # frames per clip (video)


class Scene(_Strict):
    description: str
    budgets: dict[str, float] = {}  # target budget overrides (latency_ms, power_w, ...)
    input: SceneInput = SceneInput()
    architecture: Architecture | None = None
    suggested: str = ""
    sources: list[str] = Field(min_length=1)

    def image_shape(self, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """The shape a single image input (N, C, H, W) is built at for this scene; None: as recorded."""
        h, w = shape[-2:]
        if self.input.side is not None and (h, w) != (self.input.side, self.input.side):
            return (*shape[:-2], self.input.side, self.input.side)
        if self.input.min_side is not None and min(h, w) < self.input.min_side:
            return (*shape[:-2], max(h, self.input.min_side), max(w, self.input.min_side))
        return None


class ScenesFile(_Strict):
    scenes: dict[str, Scene]


def load_scenes(path: Path | None = None) -> dict[str, Scene]:
    path = Path(path or DEFAULT_SCENES)
    try:
        data = ScenesFile.model_validate(yaml.safe_load(path.read_text()))
    except OSError as exc:
        raise SceneError(f"cannot read scenes file {path}: {exc.strerror}", "check the path") from None
    except yaml.YAMLError:
        raise SceneError(f"{path} is not valid YAML", "fix the syntax") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise SceneError(f"{path}: {loc}: {first['msg']}", "see the schema in deploy/fit/scenes.py") from None
    from vdeploy.targets import Budgets

    for name, scene in data.scenes.items():
        unknown = set(scene.budgets) - set(Budgets.model_fields)
        if unknown:
            raise SceneError(f"{path}: scene {name}: unknown budget(s) {', '.join(sorted(unknown))}")
    return data.scenes


def get_scene(name: str, path: Path | None = None) -> Scene:
    scenes = load_scenes(path)
    if name not in scenes:
        raise SceneError(f"unknown scene {name!r}", f"scenes: {', '.join(scenes)} ({path or DEFAULT_SCENES})")
    return scenes[name]
