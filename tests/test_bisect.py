"""`vdeploy debug` / bisect: a deliberately broken rule (defined here, test-only) is found as the first bad pass and
node; a clean build reports every stage within tolerance."""

from __future__ import annotations

import pytest
from onnxscript.rewriter.pattern import MatchResult, RewriteRule

from vdeploy.bisect import bisect
from vdeploy.graph_passes.rules import ALL_SPECS
from vdeploy.graph_passes.rules.base import RuleSpec, int_attr
from vdeploy.targets import OpId

BROKEN_EPSILON = 1.0  # plainly wrong (torch's default is 1e-5), yet a legal LayerNormalization


def _layer_norm(op, x, scale, bias):
    return op.LayerNormalization(x, scale, bias, _outputs=["y"])


def _not_broken_yet(context, x, scale, bias, y, **_) -> MatchResult:
    attr = y.producer().attributes.get("epsilon")
    if attr is not None and attr.as_float() == BROKEN_EPSILON:
        return MatchResult().fail("already broken")  # else the rule would rewrite its own output forever
    return MatchResult()


def _wrong_epsilon(op, x, scale, bias, y, **_):
    axis = int_attr(y.producer(), "axis", -1)
    return op.LayerNormalization(x, scale, bias, axis=axis, epsilon=BROKEN_EPSILON)


_BROKEN_RULE = RewriteRule(_layer_norm, _wrong_epsilon, _not_broken_yet, name="broken_layer_norm_epsilon")
BROKEN = RuleSpec(
    name="broken_layer_norm",
    big_op=OpId("", "LayerNormalization"),
    fuse_rules=(_BROKEN_RULE,),
    decompose_rules=(_BROKEN_RULE,),
)


@pytest.fixture(scope="module")
def vit(saved_pt2):
    return str(saved_pt2("vit"))


def test_broken_rule_is_the_first_bad_pass_and_node(vit):
    report = bisect(vit, "onnxruntime-cpu", specs=(*ALL_SPECS, BROKEN), samples=2)
    names = [stage.name for stage in report.stages]
    assert names[:2] == ["export", "canonicalize"] and names[-1] == "backend"
    assert "legalize:broken_layer_norm" in names
    assert report.first_bad_stage == "legalize:broken_layer_norm"
    bad = names.index(report.first_bad_stage)
    assert all(stage.ok for stage in report.stages[:bad])
    assert not report.stages[bad].ok and "broken_layer_norm_epsilon" in report.stages[bad].detail
    blame = report.first_bad_node
    assert blame is not None and blame.stage == "legalize:broken_layer_norm" and blame.beyond_tolerance
    assert blame.rule == "broken_layer_norm_epsilon"
    assert blame.nearest_rule_node.op_type == "LayerNormalization"
    assert report.exit_code == 3
    data = report.to_dict()
    assert data["first_bad_node"]["nearest_rule_node"]["rule"] == "broken_layer_norm_epsilon"


def test_clean_build_holds_everywhere_and_cli_exits_0(cli, vit):
    result = cli("debug", vit, "--target", "onnxruntime-cpu", "--json")
    assert result.exit_code == 0, result.stderr
    data = result.json
    assert data["first_bad_stage"] is None and data["first_bad_node"] is None
    assert all(stage["ok"] for stage in data["stages"])
    assert [s["name"] for s in data["stages"]][:3] == [
        "export",
        "canonicalize",
        "legalize:attention_normalize+attention",
    ]


def test_cli_exits_3_when_a_stage_leaves_tolerance(cli, vit, tmp_path):
    """A catalogue whose FP32 tolerance no real float computation meets: the export stage is already out."""
    import yaml

    from vdeploy.targets import load_catalog

    data = yaml.safe_load(load_catalog().path.read_text())
    data["targets"]["onnxruntime-cpu"]["tolerances"]["fp32"] = {"max_rel_err": 1e-12, "min_cosine": 1.0}
    catalog = tmp_path / "targets.yaml"
    catalog.write_text(yaml.safe_dump(data))
    result = cli("debug", vit, "--target", "onnxruntime-cpu", "--targets-file", catalog)
    assert result.exit_code == 3, result.stderr
    assert "first bad stage: export" in result.stdout


def _graph(body: str, rule_node: int | None = None):
    """A model from ONNX text; nodes named n0, n1, ...; node `rule_node` carries a rule name as a rule would."""
    import onnx.parser

    model = onnx.parser.parse_model('<ir_version: 10, opset_import: ["" : 18]>\n' + body)
    for i, node in enumerate(model.graph.node):
        node.name = f"n{i}"
        if i == rule_node:
            node.metadata_props.add(key="vdeploy.rule", value="negate_instead_of_relu")
    return model


def test_blame_names_the_rewritten_node_feeding_an_unrewritten_one():
    """The rewritten value has a new name, so the first value both graphs share and that differs is produced by an
    untouched Add; the blame names the Add and, as the rewrite behind it, the Neg the rule made."""
    import numpy as np

    from vdeploy.bisect import blame_node
    from vdeploy.targets import Tolerance

    before = _graph("g (float[4] x) => (float[4] z) { y = Relu(x)\n z = Add(y, x) }")
    after = _graph("g (float[4] x) => (float[4] z) { y2 = Neg(x)\n z = Add(y2, x) }", rule_node=0)
    samples = {"x": np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)}
    tolerance = Tolerance(max_rel_err=1e-4, min_cosine=0.99999)
    blame = blame_node("legalize:test", before, after, samples, tolerance, frozenset({"negate_instead_of_relu"}))
    assert blame.value == "z" and blame.node.op_type == "Add" and blame.node.rule is None
    assert blame.nearest_rule_node.name == "n0" and blame.rule == "negate_instead_of_relu"
    assert blame_node("same", before, before, samples, tolerance).beyond_tolerance is False
