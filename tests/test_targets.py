"""The catalogue: schema validation, profile inheritance, aliases."""

from __future__ import annotations

import pytest

from vdeploy.errors import TargetError
from vdeploy.targets import OpId, load_catalog

TOL = "tolerances: {fp32: {max_rel_err: 0.001, min_cosine: 0.99}}"


def write(tmp_path, text):
    path = tmp_path / "targets.yaml"
    path.write_text(text)
    return path


def test_shipped_catalogue_loads():
    catalog = load_catalog()
    assert {"x86-cpu", "onnxruntime-cpu"} <= set(catalog.names)
    assert catalog.get("x86").name == "x86-cpu"
    for target in catalog:
        assert target.op_set, target.name


def test_profile_base_add_remove(tmp_path):
    path = write(
        tmp_path,
        f"""
op_profiles:
  a: {{source: doc A, ops: [Conv, Relu, Softmax]}}
  b: {{source: doc B, base: a, add: ["com.microsoft::Gelu"], remove: [Softmax]}}
targets:
  t: {{description: d, backend: onnxruntime, op_profile: b, precisions: [fp32], {TOL}}}
""",
    )
    op_set = load_catalog(path).get("t").op_set
    assert op_set == {OpId("", "Conv"), OpId("", "Relu"), OpId("com.microsoft", "Gelu")}


@pytest.mark.parametrize(
    "body, needle",
    [
        ("op_profiles:\n  a: {source: s, ops: [Relu], colour: red}\ntargets: {}", "colour"),
        ("op_profiles:\n  a: {source: s, base: b}\n  b: {source: s, base: a}\ntargets: {}", "cycle"),
        ("op_profiles:\n  a: {source: s, base: ghost}\ntargets: {}", "unknown base 'ghost'"),
        (
            f"op_profiles:\n  a: {{source: s}}\ntargets:\n  t: {{description: d, backend: onnxruntime, op_profile: a, "
            f"precisions: [fp32], default_precision: int8, {TOL}}}",
            "default_precision int8",
        ),
        (
            "op_profiles:\n  a: {source: s}\ntargets:\n  t: {description: d, backend: onnxruntime, op_profile: a, "
            "precisions: [fp32, int8], tolerances: {fp32: {max_rel_err: 0.001, min_cosine: 0.99}}}",
            "int8",
        ),
        (
            f"op_profiles:\n  a: {{source: s}}\ntargets:\n  t: {{description: d, aliases: [u], backend: onnxruntime, "
            f"op_profile: a, precisions: [fp32], {TOL}}}\n  u: {{description: d, backend: onnxruntime, op_profile: a, "
            f"precisions: [fp32], {TOL}}}",
            "name 'u' is used by",
        ),
        (
            f"op_profiles:\n  a: {{source: s}}\ntargets:\n  t: {{description: d, backend: onnxruntime, op_profile: a, "
            f"precisions: [fp32], budgets: {{latency_ms: -5}}, {TOL}}}",
            "latency_ms",
        ),
        ("op_profiles:\n  a: {source: ''}\ntargets: {}", "source"),
    ],
)
def test_invalid_catalogues_are_rejected_with_the_place(tmp_path, body, needle):
    with pytest.raises(TargetError) as info:
        load_catalog(write(tmp_path, body))
    assert needle in info.value.one_line()


def test_unknown_target_names_the_known_ones():
    with pytest.raises(TargetError) as info:
        load_catalog().get("z80")
    assert "x86-cpu" in info.value.hint


def test_op_id_parse():
    assert OpId.parse("Relu") == OpId("", "Relu")
    assert OpId.parse("ai.onnx::Relu") == OpId("", "Relu")
    assert str(OpId.parse("com.microsoft::Gelu")) == "com.microsoft::Gelu"
