"""Issue 15, defect 11: property-based tests (hypothesis, derandomized so CI is reproducible).

(a) target catalogues mutated the way a careless or hostile edit would -> a valid catalogue or a TargetError,
    never any other exception;
(b) small random graphs from the op families legalization handles, through legalization for targets of every kind
    -> a clear VdeployError, or a checked graph whose ops fit the target and whose numerics match the original in
    ONNX Runtime (all optimisations off).
"""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import onnx
import onnx_ir as ir
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from tests.graph_passes.helpers import rel_err, run
from vdeploy.errors import TargetError, VdeployError
from vdeploy.targets import DEFAULT_CATALOG, load_catalog

SETTINGS = settings(derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)

# ---- (a) catalogues ------------------------------------------------------------------------------------------------


def _mini_catalogue() -> dict:
    """Four shipped targets of different kinds (OpenVINO, TVM with options, Hailo with hardware figures, an NPU with
    fallback) and their profiles, op lists cut short so each parse is fast."""
    data = yaml.safe_load(DEFAULT_CATALOG.read_text())
    targets = {name: data["targets"][name] for name in ("x86-cpu", "arm-cortex-a76", "hailo-8", "rk3588-npu")}
    profiles = {}
    for spec in targets.values():
        name = spec["op_profile"]
        while name:
            profile = dict(data["op_profiles"][name])
            for key in ("ops", "add", "remove", "unknown"):
                if key in profile:
                    profile[key] = profile[key][:12]
            profiles[name] = profile
            name = profile.get("base")
    return {"op_profiles": profiles, "targets": targets}


MINI = _mini_catalogue()
ODD_VALUES = [True, False, None, 0, -1, 1e308, "", "all", "::", "x" * 300, [], {}, [1, "a"], {"k": 1}, "1.5"]


def _paths(node, prefix=()):
    """Every key path into the data (mappings and list items)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield (*prefix, key)
        yield from _paths(value, (*prefix, key))


PATHS = sorted(_paths(MINI), key=str)


@st.composite
def mutated_catalogue(draw) -> bytes:
    data = copy.deepcopy(MINI)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(PATHS))
        parent = data
        try:
            for key in path[:-1]:
                parent = parent[key]
            action = draw(st.sampled_from(["set", "delete", "rename", "base"]))
            if action == "set":
                parent[path[-1]] = draw(st.sampled_from(ODD_VALUES))
            elif action == "delete":
                del parent[path[-1]]
            elif action == "rename" and isinstance(parent, dict):
                parent[draw(st.sampled_from(["all", "", "x86-cpu", "tvm-relax", "ok-name"]))] = parent.pop(path[-1])
            elif action == "base":
                profile = draw(st.sampled_from(sorted(data["op_profiles"])))
                data["op_profiles"][profile]["base"] = draw(st.sampled_from([*sorted(MINI["op_profiles"]), "nope"]))
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation removed or replaced this path's parent
    lines = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=200).splitlines(keepends=True)
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(lines)))
        lines.insert(
            at,
            draw(
                st.sampled_from(
                    [
                        lines[min(at, len(lines) - 1)],  # a duplicated line: duplicate keys, doubled entries
                        "  a: &a [x, x]\n  b: [*a, *a]\n",  # a small alias: legal YAML, wherever it lands
                        "deep: " + "[" * 300 + "]" * 300 + "\n",
                        "\tbad: tab\n",
                        "key: [unclosed\n",
                    ]
                )
            ),
        )
    if draw(st.booleans()):  # alias bombs at the top level: over the alias count, or expanding past the node budget
        levels = draw(st.sampled_from([7, 9]))
        bomb = ["bomb:\n", "  l0: &l0 [x, x, x, x, x, x, x, x]\n"]
        bomb += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 8)}]\n" for i in range(1, levels)]
        lines += bomb
    text = "".join(lines).encode()
    if draw(st.booleans()):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(
            st.sampled_from([b"\xe9", b"\xff\xfe", b"\x00", b": :", b"&x", b"*x", b"!!python/object"])
        )
        text += b"" if draw(st.booleans()) else b"\n"
    return text


@settings(SETTINGS, max_examples=100)
@given(text=mutated_catalogue())
def test_mutated_catalogue_is_valid_or_a_target_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("catalogue") / "targets.yaml"
    path.write_bytes(text)
    try:
        catalog = load_catalog(path)
    except TargetError as exc:
        assert exc.message and "\n" not in exc.one_line()
        event("refused: " + re.sub(r"line \d+: |\d+", "N", exc.message.removeprefix(f"{path}: "))[:45])
        return
    event("loaded")
    for target in catalog:  # a catalogue that loads is usable: op sets resolve, backend options parse
        assert isinstance(target.op_set, frozenset)
        target.backend_options()


# ---- (b) random graphs through legalization -----------------------------------------------------------------------

FAMILIES = ("matmul", "linear", "add", "relu", "softmax", "layernorm_ops", "layernorm", "gelu_erf", "erf", "transpose",
            "reshape", "attention")  # fmt: skip
TARGETS = ("onnxruntime-cpu", "x86-cpu", "jetson-orin-nano", "rk3588-npu", "hailo-8", "ethos-u55-128", "x86-cpu-tvm")


class GraphBuilder:
    """Appends nodes to one running tensor `h` of a known shape; weights are seeded initializers."""

    def __init__(self, shape: tuple[int, ...], seed: int):
        self.rng, self.shape, self.h = np.random.default_rng(seed), shape, "x"
        self.nodes: list = []
        self.inits: list = []

    def const(self, array) -> str:
        name = f"c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def ints(self, values) -> str:
        name = f"c{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(values, np.int64), name))
        return name

    def node(self, op: str, *inputs: str, **attrs) -> str:
        out = f"t{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, list(inputs), [out], **attrs))
        return out

    def add(self, family: str, width: int) -> None:
        h, d = self.h, self.shape[-1]
        if family in ("matmul", "linear"):
            h = self.node("MatMul", h, self.const(self.rng.normal(0, 0.5, (d, width))))
            self.shape = (*self.shape[:-1], width)
            if family == "linear":
                h = self.node("Add", h, self.const(self.rng.normal(0, 0.1, width)))
        elif family == "add":
            h = self.node("Add", h, self.const(self.rng.normal(0, 0.1, d)))
        elif family in ("relu", "erf"):
            h = self.node(family.capitalize(), h)
        elif family == "softmax":
            h = self.node("Softmax", h, axis=-1)
        elif family == "layernorm":
            h = self.node(
                "LayerNormalization", h, self.const(1 + 0.1 * self.rng.normal(size=d)), self.const(np.zeros(d))
            )
        elif family == "layernorm_ops":
            axes = self.ints([-1])
            centred = self.node("Sub", h, self.node("ReduceMean", h, axes))
            var = self.node("ReduceMean", self.node("Pow", centred, self.const(2.0)), axes)
            h = self.node("Div", centred, self.node("Sqrt", self.node("Add", var, self.const(1e-5))))
            h = self.node("Add", self.node("Mul", h, self.const(1 + 0.1 * self.rng.normal(size=d))), self.const(0.1))
        elif family == "gelu_erf":
            erf = self.node("Erf", self.node("Div", h, self.const(math.sqrt(2.0))))
            h = self.node("Mul", self.node("Mul", h, self.const(0.5)), self.node("Add", erf, self.const(1.0)))
        elif family == "transpose":
            perm = [*range(len(self.shape) - 2), len(self.shape) - 1, len(self.shape) - 2]
            h = self.node("Transpose", h, perm=perm)
            self.shape = tuple(self.shape[p] for p in perm)
        elif family == "reshape":  # rank 3 <-> rank 2, the last dimension kept
            target = (math.prod(self.shape[:-1]), d) if len(self.shape) == 3 else (1, self.shape[0], d)
            h = self.node("Reshape", h, self.ints(target))
            self.shape = target
        elif family == "attention":  # softmax(h h^T * scale) h: what exporters write for self-attention
            perm = [*range(len(self.shape) - 2), len(self.shape) - 1, len(self.shape) - 2]
            scores = self.node("MatMul", h, self.node("Transpose", h, perm=perm))
            probs = self.node("Softmax", self.node("Mul", scores, self.const(1 / math.sqrt(d))), axis=-1)
            h = self.node("MatMul", probs, h)
        self.h = h

    def model(self, input_shape) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "random",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))],
            [helper.make_tensor_value_info(self.h, TensorProto.FLOAT, list(self.shape))],
            self.inits,
        )
        return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 18)])


CATALOG = load_catalog()


@settings(SETTINGS, max_examples=150)
@given(
    families=st.lists(st.sampled_from(FAMILIES), min_size=1, max_size=5),
    target=st.sampled_from(TARGETS),
    shape=st.tuples(st.sampled_from([1, 2]), st.sampled_from([2, 3, 5]), st.sampled_from([4, 8])),
    width=st.sampled_from([4, 8]),
    seed=st.integers(0, 2**16),
)
def test_random_graph_legalizes_or_fails_clearly(families, target, shape, width, seed):
    from vdeploy.graph_passes.legalize import check_legal, legalize, op_census, usable_ops
    from vdeploy.stages import finish_legal

    builder = GraphBuilder(shape, seed)
    for family in families:
        builder.add(family, width)
    original = builder.model(shape)
    onnx.checker.check_model(original, full_check=True)
    target_spec = CATALOG.get(target)
    fallback = target_spec.spec.fallback
    model = ir.from_proto(original)
    result = legalize(model, target_spec.op_set, fallback=fallback)  # as the build's legalize stage
    finish_legal(model)
    usable = usable_ops(target_spec.op_set, model.opset_imports)
    try:
        check_legal(model, usable, fallback)  # the post-condition: UnsupportedOpsError for ops left without fallback
    except VdeployError as exc:
        assert exc.message and exc.hint and not fallback
        event(f"refused ({type(exc).__name__})")
        return
    event(f"legalized for {target}" + (" with fallback ops" if result.unsupported else ""))
    left = {str(op) for op in op_census(model) if op not in usable}
    assert left == set(result.unsupported) and (fallback or not left)
    assert not any(op.domain == "vdeploy.internal" for op in op_census(model))
    legal = ir.to_proto(model)
    onnx.checker.check_model(legal, full_check=True)
    feeds = {"x": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}
    tolerance = max([1e-4, *(10 * e for e in result.approximations.values())])
    assert rel_err(run(original, feeds), run(legal, feeds)) <= tolerance, (families, target)


def test_graph_builder_covers_every_family():
    """The generator itself is sound: every family builds a checked model ONNX Runtime runs."""
    builder = GraphBuilder((2, 3, 4), 0)
    for family in FAMILIES:
        builder.add(family, 4)
    model = builder.model((2, 3, 4))
    onnx.checker.check_model(model, full_check=True)
    (out,) = run(model, {"x": np.ones((2, 3, 4), np.float32)})
    assert out.shape == builder.shape and np.isfinite(out).all()
