"""Issue 15, defect 8: a target catalogue is read strictly. Each hostile catalogue is a TargetError naming what is
wrong (with its line where YAML has one), never a silent "later key wins", an internal error or a 7 GB build."""

from __future__ import annotations

import pytest
import yaml

from vdeploy.errors import TargetError
from vdeploy.targets import DEFAULT_CATALOG, load_catalog

SHIPPED = DEFAULT_CATALOG.read_text()

MINI = """\
op_profiles:
  base-ops:
    source: test
    ops: [Add, MatMul, Relu]
  more-ops:
    source: test
    base: base-ops
    add: [Softmax]
targets:
  mini:
    description: a small target
    backend: onnxruntime
    op_profile: more-ops
    precisions: [fp32]
    budgets:
      latency_ms: 10
    tolerances:
      fp32: {max_rel_err: 0.001, min_cosine: 0.999}
"""


def refused(tmp_path, text: str | bytes) -> str:
    path = tmp_path / "targets.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(TargetError) as caught:
        load_catalog(path)
    return caught.value.one_line()


def test_mini_catalogue_loads(tmp_path):
    path = tmp_path / "targets.yaml"
    path.write_text(MINI)
    assert {str(op) for op in load_catalog(path).get("mini").op_set} == {"Add", "MatMul", "Relu", "Softmax"}


def test_target_defined_twice_is_refused_not_the_later_one_winning(tmp_path):
    text = SHIPPED + "\n  x86-cpu:\n    description: a second x86-cpu\n"
    line = refused(tmp_path, text)
    assert "duplicate key 'x86-cpu'" in line and "first given at line" in line


def test_backend_given_twice_is_refused_with_its_line(tmp_path):
    line = refused(tmp_path, MINI.replace("    backend: onnxruntime\n", "    backend: onnxruntime\n    backend: tvm\n"))
    assert "line 13: duplicate key 'backend' (first given at line 12)" in line


@pytest.mark.parametrize(("depth", "needle"), [(7, "expands to more than"), (9, "more than 64 aliases")])
def test_alias_bomb_in_backend_options_is_refused_before_it_expands(tmp_path, depth, needle):
    levels = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, depth)]  # 10^depth leaves
    bomb = "".join(f"      {level}\n" for level in levels)
    text = MINI.replace("    precisions: [fp32]\n", f"    precisions: [fp32]\n    options:\n{bomb}")
    line = refused(tmp_path, text)
    assert needle in line and "alias bomb" in line


def test_non_utf8_catalogue_is_a_target_error_with_the_line(tmp_path):
    line = refused(tmp_path, MINI.replace("a small target", "caf\xe9").encode("latin-1"))
    assert "line 11: byte 0xe9 is not UTF-8" in line


def test_nesting_500_deep_is_a_target_error_not_a_recursion_error(tmp_path):
    assert "nesting deeper than" in refused(tmp_path, MINI + "extra: " + "[" * 500 + "]" * 500 + "\n")


def test_base_chain_1500_long_is_a_target_error_not_a_recursion_error(tmp_path):
    data = yaml.safe_load(MINI)
    for i in range(1500):
        data["op_profiles"][f"p{i}"] = {"source": "test", "base": f"p{i + 1}" if i < 1499 else "base-ops"}
    data["targets"]["mini"]["op_profile"] = "p0"
    assert "has over 32 profiles under it" in refused(tmp_path, yaml.safe_dump(data))


@pytest.mark.parametrize("key", ["latency_ms", "min_cosine"])
def test_boolean_where_a_number_belongs_is_refused_not_read_as_one(tmp_path, key):
    text = MINI.replace("latency_ms: 10", "latency_ms: true" if key == "latency_ms" else "latency_ms: 10")
    text = text.replace("min_cosine: 0.999", "min_cosine: true" if key == "min_cosine" else "min_cosine: 0.999")
    line = refused(tmp_path, text)
    assert key in line and "valid number (got True)" in line


def test_boolean_backend_option_is_refused(tmp_path):
    data = yaml.safe_load(SHIPPED)
    data["targets"]["arm-cortex-a76"]["options"]["tune_trials"] = True
    assert "options.tune_trials: a boolean (True)" in refused(tmp_path, yaml.safe_dump(data, sort_keys=False))


@pytest.mark.parametrize("where", ["name", "alias"])
def test_target_named_all_is_refused_as_unselectable(tmp_path, where):
    text = (
        MINI.replace("  mini:\n", "  all:\n")
        if where == "name"
        else MINI.replace("    backend:", "    aliases: [all]\n    backend:")
    )
    assert "the name 'all' cannot be selected" in refused(tmp_path, text)


@pytest.mark.parametrize("op", ["", "::", "ai.onnx::", "com.microsoft::Gelu::x", "Add Mul"])
def test_malformed_op_name_is_refused(tmp_path, op):
    line = refused(tmp_path, MINI.replace("add: [Softmax]", f"add: [Softmax, {op!r}]"))
    assert f"{op!r} is not an op name" in line


def test_cli_targets_reports_a_bad_catalogue_in_one_line(cli, tmp_path):
    path = tmp_path / "targets.yaml"
    path.write_text(MINI.replace("    backend: onnxruntime\n", "    backend: onnxruntime\n    backend: tvm\n"))
    result = cli("targets", "--targets-file", path)
    assert result.exit_code == 1
    assert result.stderr.strip().startswith("target: ") and "duplicate key 'backend'" in result.stderr
    assert "internal error" not in result.stderr
