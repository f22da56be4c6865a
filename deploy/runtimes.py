"""The runtime lever: the runtimes a target allows (its backend + targets.yaml `runtimes:`) and the measured pick.

Target + runtime (a backend name) -> the same target on that backend, op profile and options (with_runtime)
pick_runtime stage (after check; FP32, no runtime named, target runtime_pick: measured): legalize for every other
runtime -> compile each FP32 into a scratch dir -> time all side by side (validate/interleave.py) -> the fastest
when it beats the target's own by MARGIN, confirmed by a second batch of just those two (else the target's own):
its target, legal graph and coverage replace the state's; state.runtime_pick = {chosen, p50 per runtime, ...}.
The pick is cached per host ($VDEPLOY_CACHE/runtime-pick/<key>.json; key: the legal graphs, the CPU, the runtime
versions), so the same model builds the same bytes on one machine; the manifest says when a pick was cached.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from vdeploy.errors import TargetError
from vdeploy.targets import OpId, Precision, Runtime, RuntimePick, Target, load_catalog

ROUNDS, RUNS = 10, 3  # side-by-side turns and inferences per turn
MARGIN = 0.10  # another runtime must beat the target's own by this much: a smaller lead is this host's noise


def current_runtime(target: Target) -> str:
    return target.runtime or target.spec.backend


def runtime_names(target: Target) -> list[str]:
    """The target's current runtime first, then the others it allows."""
    return [current_runtime(target), *(r.key for r in target.spec.runtimes)]


def offers(target: Target, runtime: str | None, precision: str | None) -> bool:
    if precision is None:
        return True
    if runtime is None or runtime == current_runtime(target):
        return Precision(precision) in target.spec.precisions
    entry = _entry(target, runtime)
    return entry is not None and Precision(precision) in (entry.precisions or target.spec.precisions)


def backend_of(target: Target, runtime: str | None) -> str:
    entry = None if runtime is None or runtime == current_runtime(target) else _entry(target, runtime)
    return entry.backend if entry is not None else target.spec.backend


def _entry(target: Target, runtime: str) -> Runtime | None:
    return next((r for r in target.spec.runtimes if r.key == runtime), None)


def with_runtime(target: Target, runtime: str | None, catalog_path=None) -> Target:
    """The target on another of its runtimes (same name, budgets and tolerances); the one it had joins the list."""
    spec = target.spec
    if runtime is None or runtime == current_runtime(target):
        return target
    entry = _entry(target, runtime)
    if entry is None:
        raise TargetError(
            f"target {target.name} has no runtime {runtime!r}",
            f"choose one of: {', '.join(runtime_names(target))} (targets.yaml `runtimes:`)",
        )
    own = Runtime(
        name=current_runtime(target),
        backend=spec.backend,
        op_profile=spec.op_profile,
        options=spec.options,
        precisions=spec.precisions,
        source=f"the target's runtime {current_runtime(target)}",
    )
    precisions = entry.precisions or spec.precisions
    new_spec = spec.model_copy(
        update={
            "backend": entry.backend,
            "op_profile": entry.op_profile,
            "options": entry.options,
            "precisions": precisions,
            "default_precision": spec.default_precision if spec.default_precision in precisions else precisions[0],
            "runtimes": [own, *(r for r in spec.runtimes if r.key != runtime)],
        }
    )
    catalog = load_catalog(catalog_path)
    op_set = catalog.op_set(entry.op_profile)
    unknown = frozenset(OpId.parse(o) for o in catalog.data.op_profiles[entry.op_profile].unknown) - op_set
    return Target(target.name, new_spec, op_set, unknown, runtime)


# ---- the measured pick (a plan stage) --------------------------------------------------------------------------


def describe_pick(state) -> str | None:
    if not _wants_pick(state):
        return None
    names = [n for n in runtime_names(state.target) if offers(state.target, n, state.precision)]
    return f"picking the runtime: {', '.join(names)} on their legal graphs, side by side"


def _wants_pick(state) -> bool:
    target = state.target
    if state.request.runtime or state.runtime_pick is not None or state.precision != "fp32":
        return False
    if target.spec.runtime_pick is not RuntimePick.measured:
        return False
    return sum(offers(target, n, state.precision) for n in runtime_names(target)) > 1


def pick_runtime(state) -> None:
    """Time the runtimes the target allows on their own legal FP32 graphs; keep the fastest."""
    from vdeploy import stages

    if not _wants_pick(state):
        return
    target = state.target
    options = {current_runtime(target): (target, state.legal, state.legalized, state.coverage)}
    legal_by_profile = {target.spec.op_profile: (state.legal, state.legalized, state.coverage)}
    for name in runtime_names(target)[1:]:
        if not offers(target, name, state.precision):
            continue
        variant = with_runtime(target, name, state.request.catalog)
        if variant.spec.op_profile not in legal_by_profile:
            trial = copy.copy(state)
            trial.target = variant
            stages.legalize(trial)
            legal_by_profile[variant.spec.op_profile] = (trial.legal, trial.legalized, trial.coverage)
        legal, legalized, coverage = legal_by_profile[variant.spec.op_profile]
        if not coverage.unsupported:
            options[name] = (variant, legal, legalized, coverage)
    if len(options) < 2:
        return
    key = _cache_key({name: (t, legal) for name, (t, legal, _, _) in options.items()})
    record = _read_cache(key)
    own = current_runtime(target)
    if record is None:
        record = _measure(state, options)
        proposed = choose(record["p50_ms"], own)
        if proposed != own:  # a switch is confirmed by a second batch of just the two: one batch can be noise
            again = _measure(state, {name: options[name] for name in (own, proposed)})["p50_ms"]
            record["confirmation_p50_ms"] = again
            record["confirmed"] = choose(again, own) == proposed
        _write_cache(key, record)
    else:
        record = {**record, "cached": True}
    chosen = choose(record["p50_ms"], own)
    if not record.get("confirmed", True):
        chosen = own
    state.target, state.legal, state.legalized, state.coverage = options[chosen]
    state.runtime_pick = {**record, "chosen": chosen}


def choose(p50_ms: dict[str, float], own: str) -> str:
    """The fastest runtime when it beats the target's own by MARGIN, else the target's own."""
    best = min(p50_ms, key=p50_ms.__getitem__)
    return best if p50_ms[best] < (1.0 - MARGIN) * p50_ms[own] else own


def _measure(state, options: dict) -> dict:
    from vdeploy.backends import get_backend
    from vdeploy.backends.base import CompileJob
    from vdeploy.validate.interleave import time_artifacts

    with tempfile.TemporaryDirectory(prefix="vdeploy-runtime-pick-") as tmp:
        entries: list[tuple] = []
        for name, (target, legal, _, _) in options.items():
            out = Path(tmp) / name
            out.mkdir()
            backend = get_backend(target.backend)
            job = CompileJob(legal, "fp32", out, target, target.backend_options(), lambda _: None, state.feeds)
            entries.append((backend.compile(job), out, {}, state.feeds))
        latencies = time_artifacts(entries, rounds=ROUNDS, runs=RUNS)
    return {
        "p50_ms": {name: round(lat.p50, 4) for name, lat in zip(options, latencies)},
        "runs": ROUNDS * RUNS,
        "source": "measured on this host, side by side (one child process per runtime, turns in a shuffled order)",
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "cached": False,
    }


def _cache_key(candidates: dict) -> str:
    """The runtimes (backend, version, options) and their legal graphs, this CPU: what the pick depends on."""
    from vdeploy.backends import backend_class

    digest = hashlib.sha256()
    for name, (target, legal) in sorted(candidates.items()):
        backend = backend_class(target.spec.backend)()
        version = backend.version() if backend.available() else "-"
        digest.update(f"{name}={target.spec.backend} {version} {sorted(target.spec.options.items())};".encode())
        digest.update(hashlib.sha256(legal.SerializeToString()).digest())
    digest.update(f"{platform.machine()};{_cpu_name()};{os.cpu_count()}".encode())
    return digest.hexdigest()[:32]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _cache_file(key: str) -> Path:
    root = Path(os.environ.get("VDEPLOY_CACHE") or Path.home() / ".cache" / "vdeploy")
    return root / "runtime-pick" / f"{key}.json"


def _read_cache(key: str) -> dict | None:
    try:
        return json.loads(_cache_file(key).read_text())
    except (OSError, ValueError):
        return None


def _write_cache(key: str, record: dict) -> None:
    path = _cache_file(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(path)
    except OSError:
        pass  # a read-only cache only costs the next build a re-measurement
