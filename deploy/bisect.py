"""Bisect numerics: the first graph pass, then the first node, after which a build leaves tolerance.

model -> prepare (seeded samples, reference) -> stages in pipeline order: export, canonicalize, legalize:<spec> (one
rule spec more per stage), precision, backend -> each run (graphs: ONNX Runtime, all optimisations off; the backend:
run_artifact) and compared with the reference -> first stage out of tolerance -> its graph before and after with every
float value exposed -> first node (topological order) whose output leaves tolerance, and the rule-made node behind it
-> BisectReport
"""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

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

    @property
    def exit_code(self) -> int:
        return 3 if self.first_bad_stage else 0

    def to_dict(self) -> dict:
        data = asdict(self)
        for numbers in [*data["stages"], data["first_bad_node"] or {}]:  # JSON has no inf: null
            numbers.update({k: v if math.isfinite(v) else None for k, v in numbers.items() if isinstance(v, float)})
        return data


def bisect(model: str, target_name: str, *, precision: str | None = None, input_shape=None, trust_pickle=False,
           catalog=None, specs: Sequence | None = None, samples: int = 8,
           progress: Progress = lambda _: None) -> BisectReport:
    """Run every stage of a build for one target and report where numerics first leave the target's tolerance.
    `specs` (default: ALL_SPECS) are the rule specs legalization runs, one more per stage."""
    import onnx

    from vdeploy.graph_passes.rules import ALL_SPECS
    from vdeploy.pipeline import exported_for, precision_for, prepare
    from vdeploy.targets import Precision, load_catalog

    target = load_catalog(catalog).get(target_name)
    precision = precision_for(target, precision)
    tolerance = target.spec.tolerances[Precision(precision)]
    graph_tolerance = target.spec.tolerances.get(Precision.fp32, tolerance)  # FP32 graphs, before the precision stage
    prepared = prepare(model, input_shape=input_shape, trust_pickle=trust_pickle, samples=samples, progress=progress)
    exported, canonical = exported_for(prepared, target.spec.opset, progress)
    reference = prepared.reference

    graphs = [("export", exported.model, {}), ("canonicalize", canonical.model, {})]
    graphs += _legalized_prefixes(canonical.model, target, tuple(ALL_SPECS if specs is None else specs), progress)
    legal = graphs[-1][1]
    lowered = _lower(legal, target, precision, model, prepared, progress)
    if isinstance(lowered.model, onnx.ModelProto) and lowered.model is not legal:
        graphs.append(("precision", lowered.model, {}))

    stages, first_bad, blame, previous = [], None, None, None
    for name, graph, fired in graphs:
        judge = tolerance if name == "precision" else graph_tolerance
        if previous is not None and name.startswith("legalize:") and not fired:
            result = StageResult(name, previous.rel_err, previous.cosine, previous.ok, "no rewrites")
        else:
            progress(f"bisect: running stage {name}")
            numerics = _compare(reference, _run_graph(graph, prepared.samples))
            result = StageResult(name, numerics.rel_err, numerics.cosine, _within(numerics, judge), _fired(fired))
        if not result.ok and first_bad is None:
            first_bad = name
            if stages:
                progress(f"bisect: locating the first bad node of {name}")
                before = graphs[len(stages) - 1][1]
                blame = blame_node(name, before, graph, prepared.samples, judge, frozenset(fired))
        stages.append(result)
        previous = result

    stages.append(_backend_stage(lowered, target, precision, legal, prepared, tolerance, progress))
    if first_bad is None and not stages[-1].ok:
        first_bad = "backend"  # node-level blame needs a graph; the backend is reported as a stage
    return BisectReport(target.name, precision, tuple(stages), first_bad, blame)


def blame_node(stage: str, before, after, samples: dict[str, np.ndarray], tolerance, new_rules=frozenset()
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
    return NodeBlame(stage, value, numerics.rel_err, numerics.cosine, _ref(node, RULE_KEY),
                     _ref(rule_node, RULE_KEY) if rule_node else None, beyond_tolerance)


# ---- stages ---------------------------------------------------------------------------------------------------

def _legalized_prefixes(canonical, target, specs: tuple, progress: Progress) -> list:
    """("legalize:<family>", ModelProto, {rule: rewrites this stage}) per spec: the canonical graph legalized with
    specs[:i+1] on a fresh copy, finished as pipeline.legalize_for finishes it (so the last one is the build's graph).
    A spec that leaves private ops (attention_normalize) shares a stage with the next: "legalize:a+b"."""
    import onnx_ir as ir

    from vdeploy.graph_passes.legalize import legalize
    from vdeploy.graph_passes.rules.base import INTERNAL_DOMAIN
    from vdeploy.pipeline import finish_legal

    stages, done, names, fired = [], Counter(), [], Counter()
    for i, spec in enumerate(specs):
        progress(f"bisect: legalizing with {spec.name} added")
        model = ir.serde.deserialize_model(canonical)
        result = legalize(model, target.op_set, fallback=target.spec.fallback, specs=specs[:i + 1])
        finish_legal(model)
        names.append(spec.name)
        fired.update({rule: n - done[rule] for rule, n in result.rules.items() if n > done[rule]})
        done = Counter(result.rules)
        if i + 1 < len(specs) and any(n.domain == INTERNAL_DOMAIN for n in model.graph):
            continue  # no runtime runs private ops: judged together with the spec that lowers them
        stages.append((f"legalize:{'+'.join(names)}", ir.serde.serialize_model(model), dict(fired)))
        names, fired = [], Counter()
    return stages


def _lower(legal, target, precision: str, model: str, prepared, progress: Progress):
    from vdeploy.lower_precision import lower_precision
    from vdeploy.pipeline import BuildRequest

    request = BuildRequest(model=model, targets=(target.name,), precision=precision)
    return lower_precision(legal, target, precision, request, progress, prepared.loaded.mean_std)


def _backend_stage(lowered, target, precision: str, legal, prepared, tolerance, progress: Progress) -> StageResult:
    from vdeploy.backends import get_backend
    from vdeploy.pipeline import BuildRequest, graph_inputs
    from vdeploy.validate.isolate import run_artifact

    backend = get_backend(target.backend.value)
    progress(f"bisect: compiling and running with {backend.name} {backend.version()}")
    inputs = graph_inputs(legal)
    with tempfile.TemporaryDirectory(prefix="vdeploy-bisect-") as tmp:
        # numerics only: no tuning (TVM applies cached schedules where it has them; schedules do not change results)
        no_tuning = BuildRequest(model="", targets=(target.name,), tune_trials=0)
        artifact = backend.compile(lowered.model, precision, Path(tmp), target=target, request=no_tuning,
                                   progress=progress)
        run = run_artifact(artifact, Path(tmp), dict(zip(inputs, prepared.samples.values())), warmup=0, iters=0,
                           env=lowered.run_env)
    numerics = _compare(prepared.reference, run.outputs)
    return StageResult("backend", numerics.rel_err, numerics.cosine, _within(numerics, tolerance),
                       f"{backend.name} {backend.version()}")


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
    return (numerics.rel_err <= tolerance.max_rel_err and numerics.cosine >= tolerance.min_cosine
            and numerics.worst_sample_cosine >= tolerance.min_cosine)  # int8 hook: the worst sample holds too


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
    return NodeRef(node.name or "", node.op_type if not node.domain else f"{node.domain}::{node.op_type}",
                   node.metadata_props.get(key))
