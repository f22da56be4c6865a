"""The build as a plan of stages over one typed state.

plan(target, request) -> [Stage]; run_plan(stages, state, instruments) -> state
  load -> reference -> export -> prune -> legalize -> check -> runtime -> precision -> compile -> run -> compare
  -> accuracy -> judge
`build` = the plan + the bundle write; `coverage` = the plan up to legalize; `debug` = the plan with a numerics
instrument; `--fit` re-runs the tail of a plan from a copied state with one choice changed (resume_from).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

Progress = Callable[[str], None]


S = TypeVar("S")  # a plan's state: BuildState, or validate's ValidationState (both have progress, timings, instruments)


@dataclass
class Shared:
    """What every target of one model shares: computed once, reused by every plan (and every --fit candidate)."""

    loaded: Any = None  # vdeploy.load.LoadedModel
    samples: dict[str, np.ndarray] = field(default_factory=dict)  # validation inputs {name: [N, *shape]}
    samples_source: str = "seeded standard normal"
    loaded_inputs: tuple = ()  # the model's InputSpecs (shape given or recorded)
    input_specs: dict = field(default_factory=dict)  # input name -> SampleSpec (how seeded samples are drawn)
    reference: list[np.ndarray] | None = None  # eager outputs on `samples`, one array per output
    exports: dict = field(default_factory=dict)  # opset -> (ExportResult, CanonicalizeResult)
    evaluation: dict = field(default_factory=dict)  # --eval-data path -> (inputs, labels, reference top-1)
    head_importance: dict = field(default_factory=dict)  # opset -> measured head Importance (prune stage)


@dataclass
class BuildState:
    """The typed state stages read and write. Fields are filled in plan order; None means not reached yet."""

    request: Any  # vdeploy.pipeline.BuildRequest
    target: Any  # vdeploy.targets.Target
    shared: Shared = field(default_factory=Shared)
    progress: Progress = lambda _: None
    work_dir: Path | None = None  # where the artifact is written (the bundle's temporary directory)
    instruments: tuple = ()
    precision: str = ""
    exported: Any = None  # ExportResult
    canonical: Any = None  # CanonicalizeResult (after the prune stage: of the pruned graph when pruning)
    pruning: Any = None  # vdeploy.prune_stage.Pruning, when the request prunes attention heads
    legal: Any = None  # onnx.ModelProto, legalized and finished
    legalized: Any = None  # LegalizeResult (counts, choices)
    coverage: Any = None  # vdeploy.graph_passes.coverage.Coverage
    runtime_pick: dict | None = None  # the measured runtime choice (deploy/runtimes.py), when one was made
    lowered: Any = None  # vdeploy.lower_precision.Lowered
    backend: Any = None  # a BackendBase
    options: Any = None  # the backend's typed options
    artifact: Any = None  # Artifact
    run: Any = None  # RunResult of the artifact on the validation samples
    outputs_source: str = "artifact"  # "artifact", or the simulator that produced the outputs
    numerics: Any = None  # NumericsReport
    accuracy: Any = None  # Accuracy on --eval-data, or None
    estimate: dict | None = None  # the toolchain's or the roofline's latency/power estimate
    figures: Any = None  # vdeploy.judging.Figures
    judgement: Any = None  # Judgement
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds

    @property
    def feeds(self) -> dict[str, np.ndarray]:
        """The validation samples under the legal graph's input names."""
        from vdeploy.pipeline import graph_inputs

        return dict(zip(graph_inputs(self.legal), self.shared.samples.values()))

    @property
    def expected(self) -> dict[str, np.ndarray]:
        return dict(zip([o.name for o in self.legal.graph.output], self.shared.reference))


@dataclass(frozen=True)
class Stage(Generic[S]):
    """A name and a function over a plan's state: a BuildState, or validate's ValidationState."""

    name: str
    run: Callable[[S], None]
    describe: Callable[[S], str | None] = lambda _: None  # the progress line, if the stage prints one


class Instrument:
    """Called around every stage (TVM's pass instruments), and after each legalization rule family."""

    def before(self, stage: Stage, state: BuildState) -> None:
        pass

    def after(self, stage: Stage, state: BuildState) -> None:
        pass

    def after_rules(self, family: str, model, fired: dict[str, int], state: BuildState) -> None:
        """`model`: the onnx-ir model mid-legalization, after `family`'s rules ran (`fired`: rule -> rewrites)."""


class ProgressInstrument(Instrument):
    def before(self, stage: Stage, state: BuildState) -> None:
        line = stage.describe(state)
        if line:
            state.progress(line)


class TimingInstrument(Instrument):
    def __init__(self) -> None:
        self._started: dict[str, float] = {}

    def before(self, stage: Stage, state: BuildState) -> None:
        self._started[stage.name] = time.perf_counter()

    def after(self, stage: Stage, state: BuildState) -> None:
        state.timings[stage.name] = round(time.perf_counter() - self._started.pop(stage.name), 3)


def default_instruments() -> tuple[Instrument, ...]:
    return (ProgressInstrument(), TimingInstrument())


def run_plan(stages: list[Stage[S]], state: S, instruments: tuple[Instrument, ...] | None = None) -> S:
    """Apply the stages in order; every instrument sees every stage."""
    st: Any = state  # any state with `instruments`, `progress` and `timings`
    st.instruments = default_instruments() if instruments is None else instruments
    for stage in stages:
        for instrument in st.instruments:
            instrument.before(stage, st)
        stage.run(state)
        for instrument in st.instruments:
            instrument.after(stage, st)
    return state


def plan(target, request, *, until: str | None = None) -> list[Stage]:
    """The stages a build of `target` runs, in order; `until` stops after the named stage (coverage: "legalize")."""
    from vdeploy import prune_stage, runtimes
    from vdeploy import stages as s

    full = [
        Stage("load", s.load, lambda st: None if st.shared.loaded else f"loading {st.request.model_label}"),
        Stage("reference", s.reference, s.describe_reference),
        Stage("export", s.export, s.describe_export),
        Stage("prune", prune_stage.prune, prune_stage.describe_prune),  # no-op without request.prune_heads
        Stage("legalize", s.legalize, lambda st: f"legalizing for {st.target.name}"),
        Stage("check", s.check_legal),
        Stage("runtime", runtimes.pick_runtime, runtimes.describe_pick),
        Stage("precision", s.lower_precision),
        Stage("compile", s.compile_artifact, s.describe_compile),
        Stage("run", s.run_artifact_stage, s.describe_run),
        Stage("compare", s.compare_outputs),
        Stage("accuracy", s.accuracy, s.describe_accuracy),
        Stage("judge", s.judge_state),
    ]
    if until is not None:
        names = [stage.name for stage in full]
        full = full[: names.index(until) + 1]
    if until in ("export", "legalize"):
        full = [stage for stage in full if stage.name != "reference"]  # coverage needs samples, not the reference
    return full


def resume_from(state: BuildState, stage_name: str, *, changes: dict | None = None) -> BuildState:
    """A copy of `state` to re-run the plan's stages from `stage_name` on, with `changes` applied (e.g. another
    request): the shared load/reference/exports are reused, what the stages after it fill is cleared."""
    fresh = copy.copy(state)
    order = [
        "load",
        "reference",
        "export",
        "prune",
        "legalize",
        "check",
        "runtime",
        "precision",
        "compile",
        "run",
        "compare",
        "accuracy",
        "judge",
    ]
    products = {
        "export": ("exported", "canonical"),
        "prune": ("pruning",),  # and canonical, which the stage resets from shared.exports
        "legalize": ("legal", "legalized", "coverage"),
        "precision": ("lowered",),
        "compile": ("backend", "options", "artifact"),
        "run": ("run",),
        "compare": ("numerics",),
        "accuracy": ("accuracy",),
        "judge": ("estimate", "figures", "judgement"),
    }
    for name in order[order.index(stage_name) :]:
        for attr in products.get(name, ()):
            setattr(fresh, attr, None)
    fresh.timings = dict(state.timings)
    for key, value in (changes or {}).items():
        setattr(fresh, key, value)
    return fresh


def stages_from(stages: list[Stage], name: str) -> list[Stage]:
    names = [stage.name for stage in stages]
    return stages[names.index(name) :]
