"""Bad input: one clear line, exit 1, never a traceback, never a bundle left behind."""

from __future__ import annotations

import pickle
import random

import pytest
import torch

from tests.models import GOLDEN


def assert_clean_failure(result, out_dir, *needles):
    assert result.exit_code == 1, (result.exit_code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # --json keeps progress quiet: the error is the only line
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert result.json["message"]  # --json prints the error as JSON on stdout
    assert not out_dir.exists() or not any(out_dir.iterdir()), list(out_dir.iterdir())


def build(cli, model, out, *extra, target="onnxruntime-cpu"):
    return cli("build", model, "--target", target, "--out", out, "--iters", 3, "--json", *extra)


def test_unknown_target_lists_the_known_ones(cli, saved_pt2, tmp_path):
    out = tmp_path / "out"
    result = build(cli, saved_pt2("cnn"), out, target="pdp-11")
    assert_clean_failure(result, out, "unknown target 'pdp-11'", "x86-cpu", "onnxruntime-cpu")


def test_missing_file(cli, tmp_path):
    out = tmp_path / "out"
    assert_clean_failure(build(cli, tmp_path / "nope.pt2", out), out, "model file not found")


def test_truncated_pt2(cli, saved_pt2, tmp_path):
    data = saved_pt2("cnn").read_bytes()
    path = tmp_path / "cut.pt2"
    path.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    assert_clean_failure(build(cli, path, out), out, "truncated or corrupt")


def test_truncated_onnx(cli, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    data = helper.make_model(graph, ir_version=10).SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) - 9])
    out = tmp_path / "out"
    assert_clean_failure(build(cli, path, out), out, "not a recognised model file")
    assert onnx.load_from_string(data)  # the untruncated bytes are a fine model: the truncation is what fails


def test_random_bytes(cli, tmp_path):
    noise = random.Random(7).randbytes(4096)
    assert noise[:1] != b"\x80" and noise[:2] != b"PK"  # not a pickle or zip header by chance
    path = tmp_path / "noise.pt"
    path.write_bytes(noise)
    out = tmp_path / "out"
    assert_clean_failure(build(cli, path, out), out, "not a recognised model file")


class _Payload:
    """Unpickling this calls open(marker, 'w'): proof that code from the file ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_code_running_pickle_is_refused(cli, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": _Payload(marker)}, path)
    out = tmp_path / "out"
    result = build(cli, path, out)
    assert_clean_failure(result, out, "pickled Python objects", "--trust-pickle")
    assert not marker.exists()


def test_plain_pickle_protocol_file_is_refused(cli, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Payload(marker)))
    out = tmp_path / "out"
    assert_clean_failure(build(cli, path, out), out, "--trust-pickle")
    assert not marker.exists()


def test_trusted_pickle_builds(cli, tmp_path):
    build_fn, shape = GOLDEN["cnn"]
    path = tmp_path / "cnn.pt"
    torch.save(build_fn(seed=0), path)
    out = tmp_path / "out"
    result = build(cli, path, out, "--input-shape", ",".join(map(str, shape)), "--trust-pickle")
    assert result.exit_code == 0, result.stderr
    assert result.json["model"]["format"] == "pickle"


def test_state_dict_is_explained(cli, tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(GOLDEN["cnn"][0](seed=0).state_dict(), path)
    out = tmp_path / "out"
    assert_clean_failure(build(cli, path, out), out, "only tensors", "torch.export.save")


def test_input_shape_that_does_not_fit(cli, tmp_path):
    build_fn, _ = GOLDEN["vit"]
    path = tmp_path / "vit.ts"
    torch.jit.save(torch.jit.trace(build_fn(seed=0), torch.randn(1, 3, 32, 32)), str(path))
    out = tmp_path / "out"
    result = build(cli, path, out, "--input-shape", "1,3,17,23")
    assert_clean_failure(result, out, "input shape 1,3,17,23 does not fit the model")


def test_torchscript_without_shape_asks_for_one(cli, tmp_path):
    build_fn, _ = GOLDEN["cnn"]
    path = tmp_path / "cnn.ts"
    torch.jit.save(torch.jit.trace(build_fn(seed=0), torch.randn(1, 3, 32, 32)), str(path))
    out = tmp_path / "out"
    assert_clean_failure(build(cli, path, out), out, "--input-shape")


@pytest.mark.parametrize(
    "text, needle",
    [
        ("targets: [unclosed", "not valid YAML"),
        (
            "op_profiles: {}\ntargets:\n  t: {description: d, backend: gpu9000, op_profile: p, precisions: [fp32], "
            "tolerances: {fp32: {max_rel_err: 0.001, min_cosine: 0.99}}}",
            "backend",
        ),
        (
            "op_profiles:\n  p: {source: s, ops: [Relu]}\ntargets:\n  t: {description: d, backend: onnxruntime, "
            "op_profile: nope, precisions: [fp32], tolerances: {fp32: {max_rel_err: 0.001, min_cosine: 0.99}}}",
            "unknown op_profile 'nope'",
        ),
    ],
)
def test_bad_targets_yaml(cli, saved_pt2, tmp_path, text, needle):
    catalog = tmp_path / "targets.yaml"
    catalog.write_text(text)
    out = tmp_path / "out"
    result = build(cli, saved_pt2("cnn"), out, "--targets-file", catalog)
    assert_clean_failure(result, out, needle)


def test_precision_the_target_lacks(cli, saved_pt2, tmp_path):
    out = tmp_path / "out"
    result = build(cli, saved_pt2("cnn"), out, "--precision", "bf16")
    assert_clean_failure(result, out, "does not offer precision bf16")


def test_usage_error_exits_2(cli, saved_pt2):
    result = cli("build", saved_pt2("cnn"))  # no --target
    assert result.exit_code == 2


def test_out_that_is_a_file(cli, saved_pt2, tmp_path):
    blocker = tmp_path / "bundles"
    blocker.write_text("not a directory")
    result = cli("build", saved_pt2("cnn"), "--target", "onnxruntime-cpu", "--out", blocker, "--json")
    assert result.exit_code == 1 and "is not a directory" in result.stderr
    assert blocker.read_text() == "not a directory"
