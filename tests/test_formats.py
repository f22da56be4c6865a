"""Every model format vdeploy accepts builds, and the manifest says which exporter produced the ONNX."""

from __future__ import annotations

import onnx
import pytest
import torch

from tests.models import GOLDEN
from vdeploy.errors import ModelLoadError
from vdeploy.load import ModelFormat, load_model


def test_torchscript_goes_through_the_legacy_exporter(cli, tmp_path):
    build_fn, shape = GOLDEN["mobilevit"]
    path = tmp_path / "mobilevit.ts"
    torch.jit.save(torch.jit.trace(build_fn(seed=0), torch.randn(shape)), str(path))
    result = cli(
        "build",
        path,
        "--target",
        "x86-cpu",
        "--out",
        tmp_path / "out",
        "--iters",
        3,
        "--json",
        "--input-shape",
        ",".join(map(str, shape)),
    )
    assert result.exit_code == 0, result.stderr
    manifest = result.json
    assert manifest["model"]["format"] == "torchscript"
    assert manifest["export"]["exporter"] == "legacy" and manifest["export"]["opset"] == 17
    assert manifest["verdict"] == "pass"


def test_onnx_input_uses_onnxruntime_as_reference(cli, tmp_path):
    build_fn, shape = GOLDEN["cnn"]
    path = tmp_path / "cnn.onnx"
    torch.onnx.export(build_fn(seed=0), (torch.randn(shape),), str(path), dynamo=False, opset_version=17)
    result = cli("build", path, "--target", "x86-cpu", "--out", tmp_path / "out", "--iters", 3, "--json")
    assert result.exit_code == 0, result.stderr
    manifest = result.json
    assert manifest["model"]["format"] == "onnx" and manifest["export"]["exporter"] == "none"
    assert manifest["inputs"][0]["shape"] == list(shape)
    assert manifest["numerics"]["rel_err"] < 1e-4


def test_onnx_with_fixed_shape_rejects_another(cli, tmp_path):
    build_fn, shape = GOLDEN["cnn"]
    path = tmp_path / "cnn.onnx"
    torch.onnx.export(build_fn(seed=0), (torch.randn(shape),), str(path), dynamo=False, opset_version=17)
    result = cli("build", path, "--target", "x86-cpu", "--out", tmp_path / "out", "--input-shape", "1,3,64,64")
    assert result.exit_code == 1 and "is fixed to 1,3,32,32" in result.stderr


def test_pt2_records_its_input_shape(saved_pt2):
    loaded = load_model(str(saved_pt2("vit")))
    assert loaded.format is ModelFormat.exported_program
    assert [i.shape for i in loaded.inputs] == [GOLDEN["vit"][1]]


def test_timm_architecture_by_name():
    loaded = load_model("timm:resnet18")
    assert loaded.format is ModelFormat.timm and loaded.inputs[0].shape == (1, 3, 224, 224)
    assert loaded.mean_std is not None and loaded.sha256 is None
    again = load_model("timm:resnet18").module.state_dict()  # seeded init: the same weights every time (--plan)
    assert all(v.equal(again[k]) for k, v in loaded.module.state_dict().items())


def test_unknown_timm_name():
    with pytest.raises(ModelLoadError, match="no architecture 'resnet9000'"):
        load_model("timm:resnet9000")


def test_onnx_without_graph_is_not_a_model(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(onnx.ModelProto(ir_version=10).SerializeToString() + b"\x00")
    with pytest.raises(ModelLoadError, match="not a recognised model file"):
        load_model(str(path))
