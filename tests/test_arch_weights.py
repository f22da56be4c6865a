"""--arch timm:NAME | package.module:factory with --weights: state dicts and checkpoints users actually have.

timm architecture (test_resnet: 0.47 M parameters) -> torch.save(state_dict | checkpoint) -> vdeploy coverage/build
--arch ... --weights FILE; mismatched weights -> exit 1, one line listing missing/unexpected keys and shapes.
"""

from __future__ import annotations

import sys

import pytest
import torch

from vdeploy.arch import load_arch
from vdeploy.timm_compat import import_timm

ARCH = "timm:test_resnet"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """test_resnet with non-default weights, saved as: state dict, {'model': ...}, {'state_dict': module.*}."""
    torch.manual_seed(0)
    model = import_timm().create_model("test_resnet", pretrained=False).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    root = tmp_path_factory.mktemp("weights")
    state = model.state_dict()
    torch.save(state, root / "sd.pt")
    torch.save({"model": state, "epoch": 3, "optimizer": {"lr": 0.1}}, root / "ckpt.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, root / "ddp.pth")
    return model, root


def test_build_timm_arch_from_state_dict(cli, trained, tmp_path):
    model, root = trained
    result = cli(
        "build",
        "--arch",
        ARCH,
        "--weights",
        root / "sd.pt",
        "--target",
        "onnxruntime-cpu",
        "--out",
        tmp_path,
        "--iters",
        2,
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    manifest = result.json
    assert manifest["verdict"] == "pass" and manifest["inputs"][0]["shape"] == [1, 3, 160, 160]  # pretrained_cfg
    assert (tmp_path / "sd-onnxruntime-cpu" / "model.onnx").is_file()


@pytest.mark.parametrize("file", ["ckpt.pth", "ddp.pth"])
def test_checkpoint_dicts_load_the_same_weights(trained, file):
    model, root = trained
    loaded = load_arch(ARCH, str(root / file))
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), model(x))


def test_mismatched_state_dict_is_refused_with_the_keys(cli, trained, tmp_path):
    model, root = trained
    state = dict(model.state_dict())
    del state["fc.weight"]
    state["head.extra"] = torch.zeros(3)
    conv = next(k for k, v in state.items() if v.dim() == 4)  # the first conv weight: wrong shape
    state[conv] = torch.zeros(1, 1, 1, 1)
    torch.save(state, tmp_path / "bad.pt")
    out = tmp_path / "out"
    result = cli("coverage", "--arch", ARCH, "--weights", tmp_path / "bad.pt", "--target", "onnxruntime-cpu")
    assert result.exit_code == 1
    line = result.stderr.strip().splitlines()[-1]
    assert "do not fit --arch timm:test_resnet" in line and "1 missing (fc.weight)" in line
    assert "1 unexpected (head.extra)" in line and f"1 shape mismatch(es) ({conv} [1, 1, 1, 1] vs [" in line
    assert not out.exists()


def test_factory_arch_is_imported_only_when_given(cli, tmp_path, monkeypatch):
    """package.module:factory from the working directory; a pickled whole model is still refused without trust."""
    pkg = tmp_path / "mynets"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "small.py").write_text(
        "import torch\n"
        "def build():\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),\n"
        "                               torch.nn.Linear(4 * 6 * 6, 5))\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    torch.manual_seed(1)
    import importlib

    sys.path.insert(0, str(tmp_path))
    torch.save(importlib.import_module("mynets.small").build().state_dict(), tmp_path / "w.pt")
    result = cli(
        "coverage",
        "w.pt",
        "--arch",
        "mynets.small:build",
        "--input-shape",
        "1,3,8,8",
        "--target",
        "onnxruntime-cpu",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    assert result.json["onnxruntime-cpu"]["unsupported"] == []
    missing = cli("coverage", "w.pt", "--arch", "mynets.nope:build", "--target", "onnxruntime-cpu")
    assert missing.exit_code == 1 and "cannot import 'mynets.nope' for --arch" in missing.stderr


def test_weights_without_arch_is_a_usage_error(cli, trained):
    _, root = trained
    result = cli("build", "--weights", root / "sd.pt", "--target", "onnxruntime-cpu")
    assert result.exit_code == 2 and "--weights needs --arch" in result.stderr
