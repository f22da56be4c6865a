"""`vdeploy compare`: which model fits the scene on a target. Build each candidate, rank by fit, then accuracy.

models + target (+ scene: budgets, input, architecture from scenes.yaml) -> per model: load, the scene's input
shape, the default plan built and judged (a bundle each; device targets give labelled estimates) -> figures and
misses per budget -> ranking: fits the scene first, then the least accuracy loss (top-1 drop on --eval-data, else
1 - worst-sample cosine vs PyTorch), then the lower latency. A model that cannot be built ranks last, with why.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from vdeploy.errors import VdeployError
from vdeploy.fit.scenes import Architecture, Scene
from vdeploy.fit.trial import BUDGET_KINDS, LOSS_QUANTUM
from vdeploy.manifest import measured


@dataclass
class Candidate:
    model: str
    bundle: str | None = None
    error: str | None = None
    architecture: str | None = None
    input_shape: list[int] | None = None
    backend: str | None = None
    precision: str | None = None
    verdict: str | None = None
    latency_ms: float | None = None
    latency_source: str | None = None
    clip_latency_ms: float | None = None  # video scenes with a per-frame model: frames x the frame latency
    power_w: float | None = None
    power_source: str | None = None
    size_mb: float | None = None
    worst_cosine: float | None = None
    top1_drop_pt: float | None = None
    misses: dict = field(default_factory=dict)
    unmeasured: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    fits: bool = False
    rank: int = 0

    def key(self):
        if self.error:
            return (2, float("inf"), float("inf"), float("inf"))
        loss = 1.0 - self.worst_cosine if self.worst_cosine is not None else float("inf")
        latency = self.clip_latency_ms or self.latency_ms
        return (
            0 if self.fits else 1,
            self.top1_drop_pt or 0.0,
            round(max(loss, 0.0) / LOSS_QUANTUM),
            latency if latency is not None else float("inf"),
        )


def compare_models(models: list[str], request, scene: Scene | None, progress) -> list[Candidate]:
    """Build and rank `models` for `request`'s (single) target; `request.model` is replaced per model."""
    from vdeploy.pipeline import resolve_targets

    (target,) = resolve_targets(request.targets, request.catalog)[:1]
    if scene is not None and scene.budgets:
        request = dataclasses.replace(
            request, budgets=tuple(sorted({**dict(request.budgets), **scene.budgets}.items()))
        )
    candidates = []
    for model in models:
        progress(f"compare: {model}")
        candidate = Candidate(model)
        try:
            _build_one(candidate, dataclasses.replace(request, model=model), target, scene, progress)
        except VdeployError as exc:
            candidate.error = exc.one_line()
        candidates.append(candidate)
    ranked = sorted(candidates, key=Candidate.key)
    for i, candidate in enumerate(ranked, 1):
        candidate.rank = i
    return ranked


def _build_one(candidate: Candidate, request, target, scene: Scene | None, progress) -> None:
    from vdeploy.pipeline import build_target, new_state
    from vdeploy.plan import Shared, plan, run_plan
    from vdeploy.sources import load_request

    loaded = load_request(request, progress)
    frames = None
    if scene is not None and len(loaded.inputs) == 1:
        shape = tuple(loaded.inputs[0].shape)
        if len(shape) == 4:
            new_shape = scene.image_shape(shape)
            if new_shape:
                request = dataclasses.replace(request, input_shape=new_shape)
            frames = scene.input.frames
        elif len(shape) == 5 and scene.input.frames:  # a video model: (N, C, T, H, W) or (N, T, C, H, W)
            time_axis = 2 if shape[1] in (1, 3) else 1
            clip = list(shape)
            clip[time_axis] = scene.input.frames
            if scene.input.side:
                clip[-2:] = [scene.input.side, scene.input.side]
            request = dataclasses.replace(request, input_shape=tuple(clip))
    shared = Shared(loaded=loaded)
    run_plan(plan(target, request, until="reference"), new_state(request, target, shared, progress))
    result = build_target(new_state(request, target, shared, progress))
    _read_manifest(candidate, result, frames)
    if scene is not None and scene.architecture is not None and candidate.architecture != scene.architecture.value:
        candidate.misses["architecture"] = {"value": candidate.architecture, "limit": scene.architecture.value}
    if scene is not None and scene.input.min_side and min(candidate.input_shape[-2:]) < scene.input.min_side:
        candidate.misses["input"] = {"value": candidate.input_shape, "limit": f">= {scene.input.min_side}"}
    candidate.fits = not candidate.misses and not candidate.unmeasured and candidate.verdict != "fail"


def _architecture(ops_before: dict) -> str:
    convs = ops_before.get("Conv", 0) + ops_before.get("ConvTranspose", 0)
    attention = any(ops_before.get(op, 0) for op in ("Softmax", "com.microsoft::MultiHeadAttention", "Attention"))
    if attention and convs > 2:
        return Architecture.hybrid.value
    return (Architecture.transformer if attention else Architecture.cnn).value


def _read_manifest(candidate: Candidate, result, frames: int | None) -> None:

    m = result.manifest
    candidate.bundle = str(result.bundle)
    candidate.backend, candidate.precision, candidate.verdict = m["backend"], m["precision"], m["verdict"]
    candidate.input_shape = m["inputs"][0]["shape"] if m["inputs"] else None
    candidate.architecture = _architecture(m["coverage"]["ops_before"])
    budgets = m["budgets"]
    latency, power = measured(m, "latency_ms"), measured(m, "power_w")
    if latency:
        candidate.latency_ms = latency[budgets.get("latency_stat", "p50")]
        candidate.latency_source = latency.get("source", "measured")
        if frames:
            candidate.clip_latency_ms = round(frames * candidate.latency_ms, 4)
            candidate.notes.append(f"clip = {frames} frames, one inference each")
    if power:
        candidate.power_w, candidate.power_source = power["mean"], power.get("source")
    candidate.size_mb = m["size_mb"]
    candidate.worst_cosine = m["numerics"].get("worst_sample_cosine")
    candidate.top1_drop_pt = (m.get("accuracy") or {}).get("top1_drop_pt")
    values = {
        "latency_ms": (candidate.clip_latency_ms or candidate.latency_ms, candidate.latency_source),
        "power_w": (candidate.power_w, candidate.power_source),
        "energy_mj": ((power or {}).get("energy_mj"), candidate.power_source),
        "size_mb": (candidate.size_mb, "measured"),
        "peak_mem_mb": (measured(m, "peak_mem_mb"), "measured"),
    }
    for name in BUDGET_KINDS:
        limit = budgets.get(name)
        value, source = values.get(name, (None, None))
        if limit is None:
            continue
        if value is None:
            candidate.unmeasured[name] = m["reason"].get(name, "not measured")
        elif value > limit:
            over = round(100.0 * (value / limit - 1.0), 1)
            candidate.misses[name] = {"value": value, "limit": limit, "over_pct": over, "source": source}
    gates = [v["message"] for v in m["violations"] if v["budget"] not in BUDGET_KINDS]
    if gates:
        candidate.misses["numerics"] = {"value": "; ".join(gates), "limit": "the target's gate"}


def to_rows(candidates: list[Candidate]) -> list[dict]:
    return [dataclasses.asdict(c) for c in candidates]
