"""Issue 15, defect 9: the user's (or the host's) mistakes get their own message and hint, never "internal error …
report it", and sizes are checked before anything is allocated or inflated."""

from __future__ import annotations

import os
import signal
import subprocess
import zipfile

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from vdeploy.errors import ModelLoadError


def relu_onnx(path, shape, ir_version: int | None = 10):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    kw = {"ir_version": ir_version} if ir_version else {}  # onnx 1.23 stamps an IR version ORT 1.31 cannot read
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], **kw), str(path))
    return path


def build(cli, model, out, *extra):
    return cli("build", model, "--target", "onnxruntime-cpu", "--out", out, "--iters", 2, "--json", *extra)


def user_error(result, out, *needles):
    assert result.exit_code == 1, (result.exit_code, result.stderr)
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "internal error" not in line and "Traceback" not in line, line
    for needle in needles:
        assert needle in line, line
    assert not out.exists() or not [p for p in out.iterdir() if not p.is_symlink()], list(out.iterdir())
    return line


def test_full_disk_is_the_hosts_condition_not_an_internal_error(cli, saved_pt2, tmp_path):
    mount = tmp_path / "small-disk"
    mount.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=120k", "tmpfs", str(mount)], check=True, capture_output=True
        )
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("needs permission to mount a 120 KB tmpfs (a real full disk); runs as root")
    try:
        out = mount / "out"
        line = user_error(build(cli, saved_pt2("cnn"), out), out, "disk: no space left on the device while writing")
        assert str(out) in line and "free disk space" in line
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_host_error_mapping_names_the_file():
    import errno

    from vdeploy.host_errors import host_error

    mapped = host_error(OSError(errno.ENOSPC, "No space left on device", "/data/out/x.npz"))
    assert mapped.kind == "disk" and "while writing /data/out/x.npz" in mapped.message
    assert host_error(OSError(errno.ENOENT, "gone")) is None  # not the host's condition: stays an internal error


@pytest.mark.parametrize("which", ["bundle", "out"])
def test_dangling_symlink_as_output_path_is_named(cli, saved_pt2, tmp_path, which):
    out = tmp_path / "out"
    if which == "bundle":
        out.mkdir()
        (out / "cnn-onnxruntime-cpu").symlink_to(tmp_path / "gone")
    else:
        out.symlink_to(tmp_path / "gone")
    needle = "the bundle path" if which == "bundle" else "--out"
    user_error(build(cli, saved_pt2("cnn"), out), out, f"path: {needle}", "is a symbolic link to", "does not exist")


def test_huge_declared_onnx_input_is_refused_before_allocating(cli, tmp_path):
    out = tmp_path / "out"
    model = relu_onnx(tmp_path / "huge.onnx", [1_000_000, 1_000_000])  # 10^12 elements
    user_error(build(cli, model, out), out, "inputs: input 'x' of shape 1000000,1000000 has 1e+12 elements")


def test_huge_input_shape_is_refused_before_allocating(cli, saved_pt2, tmp_path):
    out = tmp_path / "out"
    line = user_error(build(cli, saved_pt2("cnn"), out, "--input-shape", "1,3,100000,100000"), out, "GiB limit")
    assert "VDEPLOY_MAX_SAMPLE_BYTES" in line


@pytest.mark.parametrize("where", ["onnx", "--input-shape"])
def test_100_dimensional_shape_is_a_clear_error(cli, saved_pt2, tmp_path, where):
    out = tmp_path / "out"
    if where == "onnx":
        result = build(cli, relu_onnx(tmp_path / "dims.onnx", [1] * 100), out)
    else:
        result = build(cli, saved_pt2("cnn"), out, "--input-shape", ",".join(["1"] * 100))
    user_error(result, out, "has 100 dimensions; vdeploy takes inputs of at most 16")


def external_data_model(path, location: str):
    weights = numpy_helper.from_array(np.ones(4, np.float32), "w")
    weights.data_location = TensorProto.EXTERNAL
    weights.ClearField("raw_data")
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = weights.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [weights],
    )
    path.write_bytes(
        helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    )
    return path


@pytest.mark.parametrize(("kind", "needle"), [("absolute", "is an absolute path"), ("escaping", "climbs out")])
def test_external_data_outside_the_model_folder_is_refused(cli, tmp_path, kind, needle):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.ones(4, np.float32).tobytes())
    (tmp_path / "models").mkdir()
    location = str(secret) if kind == "absolute" else "../secret.bin"
    model = external_data_model(tmp_path / "models" / "m.onnx", location)
    out = tmp_path / "out"
    user_error(build(cli, model, out), out, "tensor 'w' keeps its data in an external file", needle)


def test_ir_version_onnx_runtime_cannot_read_is_named_in_full(cli, tmp_path):
    out = tmp_path / "out"
    model = relu_onnx(tmp_path / "new.onnx", [1, 4], ir_version=None)
    ir_version = onnx.load(str(model)).ir_version
    line = user_error(build(cli, model, out), out, f"is saved at ONNX IR version {ir_version}; ONNX Runtime")
    assert "reads IR versions up to" in line and "re-save it at IR version" in line and "onnxruntime_src" not in line


class RaisesInForward(torch.nn.Module):
    def forward(self, x):
        if x.sum() > -1e30:
            raise ValueError("calibration table not loaded: call load_table() first")
        return x


def test_torchscript_forward_that_raises_is_not_blamed_on_the_shape(cli, tmp_path):
    model = tmp_path / "raises.pt"
    torch.jit.save(torch.jit.script(RaisesInForward()), str(model))
    out = tmp_path / "out"
    line = user_error(
        build(cli, model, out, "--input-shape", "1,4"), out, "the model's forward raised ValueError", "load_table()"
    )
    assert "does not fit the model" not in line


def test_pt2_zip_bomb_is_refused_by_declared_size_before_inflating(saved_pt2, tmp_path):
    from vdeploy.load import load_model

    bomb = tmp_path / "bomb.pt2"
    source = zipfile.ZipFile(saved_pt2("cnn"))
    with zipfile.ZipFile(bomb, "w") as archive:
        for info in source.infolist():
            archive.writestr(info, source.read(info))
        member = zipfile.ZipInfo(f"{source.namelist()[0].split('/')[0]}/data/weights/extra")
        member.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(member, "w", force_zip64=True) as f:
            zeros = bytes(1 << 20)
            for _ in range(300):  # 300 MiB of zeros deflate to ~0.3 MiB
                f.write(zeros)
    assert bomb.stat().st_size < 2 << 20
    with pytest.raises(ModelLoadError, match=r"declares 0.293 GiB compressed into .* refused as a zip bomb"):
        load_model(str(bomb))


def test_ctrl_c_inside_openvino_conversion_is_an_interrupt(monkeypatch, tmp_path):
    """OpenVINO wraps a KeyboardInterrupt raised in a Python callback into OpConversionFailure; a real SIGINT sent
    from inside a conversion callback must still come out as an interrupt, not "could not convert the model"."""
    pytest.importorskip("openvino")
    import openvino as ov
    from openvino.frontend.onnx import ConversionExtension

    from vdeploy.backends.base import CompileJob
    from vdeploy.backends.openvino import OpenVinoBackend

    def ctrl_c(node):
        os.kill(os.getpid(), signal.SIGINT)

    convert = ov.convert_model
    monkeypatch.setattr(
        ov, "convert_model", lambda path, **kw: convert(path, extension=[ConversionExtension("Relu", ctrl_c)])
    )
    model = onnx.load(str(relu_onnx(tmp_path / "relu.onnx", [1, 4])))
    with pytest.raises(KeyboardInterrupt):
        OpenVinoBackend().compile(CompileJob(model, "fp32", tmp_path))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
