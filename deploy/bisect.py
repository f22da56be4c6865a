"""Bisect numerics: the first graph pass, then the first node, after which a build leaves tolerance.

the build's own plan, run once with NumericsInstrument: after export, canonicalize, each legalization rule family and
the precision stage the graph runs in ONNX Runtime (all optimisations off); after compare the artifact's numerics are
taken as the build judges them -> first stage out of tolerance -> its graph and the one before it with every float
value exposed -> first node (topological order) whose output leaves tolerance, and the rule-made node behind it
-> BisectReport (with the judged artifact's file hashes)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vdeploy.layer_analysis import LayerAnalysis
from vdeploy.plan import Instrument

Progress = Callable[[str], None]

NODE_SAMPLES = 2  # samples for the node-level comparison (every intermediate value is kept in memory)


@dataclass(frozen=True)
class StageResult:
    name: str  # "export", "canonicalize", "legalize:<family>", "precision", "backend"
    rel_err: float  # against the reference: max |out - ref| / max |ref|, worst output
    cosine: float  # worst output
    ok: bool  # within the tolerance this stage is judged with
    detail: str = ""  # the rules that fired, or why the numbers are the previous stage's


@dataclass(frozen=True)
class NodeRef:
    name: str
    op_type: str
    rule: str | None  # RULE_KEY metadata: the rule that made the node, if one did


@dataclass(frozen=True)
class NodeBlame:
    """The first value (after-graph, topological order) that differs from the before-graph beyond tolerance."""

    stage: str
    value: str
    rel_err: float  # max |after - before| / max |before| of that value
    cosine: float
    node: NodeRef  # the node producing the value
    nearest_rule_node: NodeRef | None  # the node itself if this stage's rules made it, else the nearest such feeding it
    beyond_tolerance: bool = True  # False: no single value left tolerance; the worst one is named

    @property
    def rule(self) -> str | None:
        return self.nearest_rule_node.rule if self.nearest_rule_node else self.node.rule


@dataclass(frozen=True)
class BisectReport:
    target: str
    precision: str
    stages: tuple[StageResult, ...]
    first_bad_stage: str | None
    first_bad_node: NodeBlame | None
    artifact_files: dict[str, str] = field(default_factory=dict)  # the judged artifact's files -> sha256
    layers: LayerAnalysis | None = None  # the vendor toolchain's own per-layer numerics (rknn accuracy_analysis)

    @property
    def exit_code(self) -> int:
        return 3 if self.first_bad_stage else 0

    def to_dict(self) -> dict:
        data = asdict(self)
        for numbers in [*data["stages"], data["first_bad_node"] or {}]:  # JSON has no inf: null
            numbers.update({k: v if math.isfinite(v) else None for k, v in numbers.items() if isinstance(v, float)})
        return data


def bisect(
    model: str,
    target_name: str,
    *,
    precision: str | None = None,
    input_shape=None,
    trust_pickle=False,
    catalog=None,
    specs: Sequence | None = None,
    samples: int = 8,
    request=None,
    progress: Progress = lambda _: None,
) -> BisectReport:
    """Run the target's build plan once with a numerics instrument and report where numerics first leave the
    target's tolerance. `request` (a BuildRequest) carries every build option (--calib, --eval-data, ...), so the
    artifact judged is the one `vdeploy build` makes; `specs` replaces the legalization rule specs (tests)."""
    import dataclasses
    import tempfile

    from vdeploy.pipeline import BuildRequest, new_state
    from vdeploy.plan import Shared, default_instruments, plan, run_plan

    if request is None:
        request = BuildRequest(
            model=model,
            targets=(target_name,),
            precision=precision,
            input_shape=input_shape,
            trust_pickle=trust_pickle,
            catalog=catalog,
            samples=samples,
        )
    if specs is not None:
        request = dataclasses.replace(request, rule_specs=tuple(specs))
    request = dataclasses.replace(request, iters=0, warmup=0)  # numerics only: no timed runs
    from vdeploy.targets import load_catalog

    target = load_catalog(request.catalog).get(target_name)
    state = new_state(request, target, Shared(), progress)
    numerics = NumericsInstrument()
    with tempfile.TemporaryDirectory(prefix="vdeploy-debug-") as tmp:
        state.work_dir = Path(tmp)
        run_plan(plan(target, request, until="compare"), state, (*default_instruments(), numerics))
        files = {f: _sha256(Path(tmp) / f) for f in state.artifact.files}
    return numerics.report(state, files)


class NumericsInstrument(Instrument):
    """After export, canonicalize, each legalization rule family and the precision stage: the graph in ONNX Runtime
    (all optimisations off) against the reference; after compare: the artifact itself. The first graph out of
    tolerance is diffed node by node against the one before it."""

    def __init__(self) -> None:
        self.stages: list[StageResult] = []
        self.first_bad: str | None = None
        self.blame: NodeBlame | None = None
        self._previous = None  # the last graph checked (onnx.ModelProto)
        self._pending: tuple[list[str], dict] = ([], {})  # families whose graph still holds private ops
        self.layers: LayerAnalysis | None = None

    def after(self, stage, state) -> None:
        from vdeploy.targets import Precision

        graph_gate = state.target.spec.tolerances.get(Precision.fp32, self._gate(state))
        if stage.name == "export":
            self._check("export", state.exported.model, {}, state, graph_gate)
            self._check("canonicalize", state.canonical.model, {}, state, graph_gate)
        elif stage.name == "prune" and state.pruning is not None:  # pruning's own cost, against the unpruned model
            self._check("prune", state.canonical.model, {}, state, graph_gate)
        elif stage.name == "legalize":
            self._previous = state.legal  # the finished legal graph is what the precision stage starts from
        elif stage.name == "precision":
            import onnx

            lowered = state.lowered.model
            if isinstance(lowered, onnx.ModelProto) and lowered is not state.legal:
                self._check("precision", lowered, {}, state, self._gate(state))
        elif stage.name == "compare":
            ok = _within(state.numerics, self._gate(state))
            self.stages.append(
                StageResult(
                    "backend",
                    state.numerics.rel_err,
                    state.numerics.cosine,
                    ok,
                    f"{state.backend.name} {state.backend.version()} ({state.outputs_source})",
                )
            )
            if not ok and self.first_bad is None:
                self.first_bad = "backend"  # node-level blame needs a graph; the backend is reported as a stage
            from vdeploy.layer_analysis import analyse

            self.layers = analyse(state, self._gate(state).min_cosine)  # the toolchain's own, where it has one

    def after_rules(self, family, model, fired, state) -> None:
        import onnx_ir as ir

        from vdeploy.graph_passes.rules.base import INTERNAL_DOMAIN
        from vdeploy.stages import finish_legal
        from vdeploy.targets import Precision

        names, pending = self._pending
        names.append(family)
        pending.update(fired)
        if any(n.domain == INTERNAL_DOMAIN for n in model.graph):
            return  # no runtime runs private ops: judged together with the family that lowers them
        self._pending = ([], {})
        name = f"legalize:{'+'.join(names)}"
        gate = state.target.spec.tolerances.get(Precision.fp32, self._gate(state))
        if not pending and self.stages:
            last = self.stages[-1]
            self.stages.append(StageResult(name, last.rel_err, last.cosine, last.ok, "no rewrites"))
            return
        copy = ir.serde.deserialize_model(ir.serde.serialize_model(model))
        finish_legal(copy)
        self._check(name, ir.serde.serialize_model(copy), pending, state, gate)

    @staticmethod
    def _gate(state):
        return state.request.tolerance_for(state.target, state.precision)

    def _check(self, name: str, graph, fired: dict, state, gate) -> None:
        state.progress(f"debug: checking numerics after {name}")
        numerics = _compare(state.shared.reference, _run_graph(graph, state.shared.samples))
        ok = _within(numerics, gate)
        self.stages.append(StageResult(name, numerics.rel_err, numerics.cosine, ok, _fired(fired)))
        if not ok and self.first_bad is None:
            self.first_bad = name
            if self._previous is not None:
                state.progress(f"debug: locating the first bad node of {name}")
                self.blame = blame_node(name, self._previous, graph, state.shared.samples, gate, frozenset(fired))
        self._previous = graph

    def report(self, state, files: dict[str, str]) -> BisectReport:
        return BisectReport(
            state.target.name, state.precision, tuple(self.stages), self.first_bad, self.blame, files, self.layers
        )


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def blame_node(
    stage: str, before, after, samples: dict[str, np.ndarray], tolerance, new_rules=frozenset()
) -> NodeBlame | None:
    """Compare every float value both graphs (onnx.ModelProto) compute under one name; return the first node of
    `after`, in topological order, whose output leaves `tolerance` relative to that value's scale. `new_rules`: the
    rules this stage fired; a node they made is named as `nearest_rule_node`."""
    import onnx_ir as ir

    few = {name: array[:NODE_SAMPLES] for name, array in samples.items()}
    before_values = _run_graph(_expose_values(before), few, named=True)
    after_model = ir.serde.deserialize_model(_expose_values(after))
    after_values = _run_graph(ir.serde.serialize_model(after_model), few, named=True)
    after_model.graph.sort()
    worst = None
    for node in after_model.graph:
        for value in node.outputs:
            a, b = after_values.get(value.name), before_values.get(value.name)
            if a is None or b is None or a.shape != b.shape:
                continue
            numerics = _compare({value.name: b}, [a])
            if not _within(numerics, tolerance):
                return _blame(stage, node, value.name, numerics, new_rules, beyond_tolerance=True)
            if worst is None or numerics.rel_err > worst[2].rel_err:
                worst = (node, value.name, numerics)
    return None if worst is None else _blame(stage, *worst, new_rules, beyond_tolerance=False)


def _blame(stage: str, node, value: str, numerics, new_rules: frozenset, beyond_tolerance: bool) -> NodeBlame:
    from vdeploy.graph_passes.rules.base import RULE_KEY

    rule_node = _nearest_rule_node(node, new_rules, RULE_KEY)
    return NodeBlame(
        stage,
        value,
        numerics.rel_err,
        numerics.cosine,
        _ref(node, RULE_KEY),
        _ref(rule_node, RULE_KEY) if rule_node else None,
        beyond_tolerance,
    )


# ---- helpers --------------------------------------------------------------------------------------------------


def _run_graph(model, samples: dict[str, np.ndarray], named: bool = False):
    """ONNX Runtime, all graph optimisations off, sample by sample: a list of stacked outputs ([samples, *shape]),
    or {output name: stacked output} when `named`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    count = next(iter(samples.values())).shape[0]
    runs = [session.run(None, dict(zip(names, (a[i] for a in samples.values())))) for i in range(count)]
    stacked = [np.stack([run[k] for run in runs]) for k in range(len(runs[0]))]
    return dict(zip([o.name for o in session.get_outputs()], stacked)) if named else stacked


def _expose_values(model):
    """The model with every float value a top-level node computes added as a graph output."""
    import onnx_ir as ir
    import onnx_ir.passes.common as common_passes

    graph_model = ir.serde.deserialize_model(model)
    common_passes.ShapeInferencePass(strict_mode=False)(graph_model)  # dtypes for values the exporter left untyped
    graph = graph_model.graph
    shown = {v.name for v in graph.outputs}
    for node in graph:
        for value in node.outputs:
            if value.name and value.name not in shown and value.dtype is not None and value.dtype.is_floating_point():
                graph.outputs.append(value)
                shown.add(value.name)
    return ir.serde.serialize_model(graph_model)


def _compare(reference, outputs: list):
    """NumericsReport of outputs (in order) against reference (list in graph output order, or {name: array})."""
    from vdeploy.validate.compare import compare

    if not isinstance(reference, dict):
        reference = {f"output{i}": array for i, array in enumerate(reference)}
    return compare(reference, dict(zip(reference, outputs)))


def _within(numerics, tolerance) -> bool:
    return (
        numerics.rel_err <= tolerance.max_rel_err
        and numerics.cosine >= tolerance.min_cosine
        and numerics.worst_sample_cosine >= tolerance.min_cosine
    )  # int8 hook: the worst sample holds too


def _fired(fired: dict) -> str:
    return ", ".join(f"{rule} x{n}" for rule, n in sorted(fired.items()))


def _nearest_rule_node(node, rules: frozenset, key: str):
    """`node` or the closest node upstream of it (breadth first) made by one of `rules`; None if none is."""
    if not rules:
        return None
    seen, frontier = {id(node)}, [node]
    while frontier:
        for candidate in frontier:
            if candidate.metadata_props.get(key) in rules:
                return candidate
        upstream = []
        for candidate in frontier:
            for value in candidate.inputs:
                producer = value.producer() if value is not None else None
                if producer is not None and id(producer) not in seen:
                    seen.add(id(producer))
                    upstream.append(producer)
        frontier = upstream
    return None


def _ref(node, key: str) -> NodeRef:
    return NodeRef(
        node.name or "",
        node.op_type if not node.domain else f"{node.domain}::{node.op_type}",
        node.metadata_props.get(key),
    )
