"""Validation inputs per input: from the model (BN var -> positive, integer -> ids, *mask* -> 0/1) or --input-spec.

ONNX model with non-image inputs -> sample_specs -> seeded samples -> reference; NaN in the reference -> exit 1 with
one line naming the inputs and the option.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vdeploy.errors import InputSpecError
from vdeploy.load import InputSpec, load_model
from vdeploy.reference import SampleKind, make_samples, parse_input_spec, sample_specs


@pytest.fixture(scope="module")
def bn_onnx(tmp_path_factory):
    """ONNX's test_batchnorm_example graph: every BatchNormalization operand, var included, is a graph input."""
    names = {"x": [2, 3, 4, 5], "s": [3], "bias": [3], "mean": [3], "var": [3]}
    graph = helper.make_graph(
        [helper.make_node("BatchNormalization", list(names), ["y"])],
        "bn",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, d) for n, d in names.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4, 5])],
    )
    path = tmp_path_factory.mktemp("bn") / "bn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=8), str(path))
    return path


def test_bn_var_input_gets_positive_samples_and_builds(cli, bn_onnx, tmp_path):
    result = cli("build", bn_onnx, "--target", "onnxruntime-cpu", "--out", tmp_path, "--iters", 2, "--json")
    assert result.exit_code == 0, result.stderr
    manifest = result.json
    assert manifest["verdict"] == "pass"
    assert "var positive (consumed as BatchNormalization var)" in manifest["numerics"]["inputs"]


def test_nan_reference_is_an_input_error_not_a_failed_gate(cli, bn_onnx, tmp_path):
    out = tmp_path / "out"
    result = cli("build", bn_onnx, "--target", "onnxruntime-cpu", "--out", out, "--input-spec", "var:normal")
    assert result.exit_code == 1
    line = result.stderr.strip().splitlines()[-1]
    assert "validation inputs produced NaN in the reference" in line and "--input-spec" in line and "var" in line
    assert not out.exists()


def test_parse_input_spec():
    assert parse_input_spec("x:uniform:0:1")[1].kind is SampleKind.uniform
    assert parse_input_spec("tokens:ids:30522")[1].vocab == 30522
    assert parse_input_spec("var:positive") == ("var", parse_input_spec("var:positive")[1])
    for bad in ("x", "x:gauss", "x:uniform:1:0", "x:ids", "x:ids:-3", "x:mask:1", ":positive", "x:uniform:a:b"):
        with pytest.raises(InputSpecError, match="--input-spec"):
            parse_input_spec(bad)


def test_specs_from_the_model_ids_mask_positive(tmp_path):
    """int64 ids indexing a Gather table get ids below its row count; an int *mask* input gets 0/1."""
    table = numpy_helper.from_array(np.zeros((7, 4), np.float32), "table")
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["emb"]),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "axis"], ["m3"]),
        helper.make_node("Mul", ["emb", "m3"], ["y"]),
    ]
    axis = numpy_helper.from_array(np.array([-1], np.int64), "axis")
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 5]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, 5]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 4])],
        [table, axis],
    )
    path = tmp_path / "ids.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), str(path))
    loaded = load_model(str(path))
    specs = sample_specs(loaded, loaded.inputs)
    assert specs["ids"].kind is SampleKind.ids and specs["ids"].vocab == 7
    assert specs["attention_mask"].kind is SampleKind.mask
    samples = make_samples(loaded.inputs, 4, specs)
    assert samples["ids"].dtype == np.int64 and samples["ids"].min() >= 0 and samples["ids"].max() < 7
    assert set(np.unique(samples["attention_mask"])) <= {0, 1}
    with pytest.raises(InputSpecError, match="not a model input"):
        sample_specs(loaded, loaded.inputs, ["nope:positive"])


def test_default_samples_are_unchanged_by_specs():
    """Inputs without a spec draw exactly the standard-normal samples they drew before specs existed."""
    inputs = (InputSpec("x", (1, 3, 4, 4)),)
    expected = np.random.default_rng(20261122).standard_normal((2, 1, 3, 4, 4)).astype("float32")
    np.testing.assert_array_equal(make_samples(inputs, 2)["x"], expected)
