"""Issue 15, defect 10: a content-addressed build cache; measured figures apart from the reproducible part.

An unchanged rebuild restores the earlier bundle (byte-identical artifact files) without loading the model; the
manifest and the console say so and name the build. --no-cache / no_cache=True rebuild. Two full builds of the same
inputs differ only inside manifest["measured"].
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from vdeploy.build_cache import build_key, evict
from vdeploy.pipeline import BuildRequest
from vdeploy.targets import load_catalog


@pytest.fixture
def cache_on(tmp_path, monkeypatch):
    monkeypatch.setenv("VDEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VDEPLOY_BUILD_CACHE", raising=False)
    return tmp_path / "cache" / "builds"


def _files(manifest: dict, bundle: Path) -> dict[str, bytes]:
    return {f["path"]: (bundle / f["path"]).read_bytes() for f in manifest["files"]}


def _reproducible(manifest: dict) -> dict:
    return {k: v for k, v in manifest.items() if k != "measured"}


def test_unchanged_rebuild_comes_from_the_cache_byte_identical_without_loading(
    saved_pt2, tmp_path, cache_on, monkeypatch, cli
):
    """Before the fix: every rebuild loaded, exported and compiled again (as long as the first build)."""
    import vdeploy

    model = tmp_path / "cnn.pt2"
    shutil.copy(saved_pt2("cnn"), model)
    first = vdeploy.build(str(model), "onnxruntime-cpu", out=tmp_path / "a", iters=3)
    assert first.manifest["measured"]["cache"] == {"hit": False, "key": build_key(first_request(model), ort())}

    def no_loading(*args, **kwargs):
        raise AssertionError("a cached rebuild loaded the model")

    monkeypatch.setattr("vdeploy.sources.load_request", no_loading)
    result = cli("build", model, "--target", "onnxruntime-cpu", "--out", tmp_path / "b", "--iters", "3")
    assert result.exit_code == 0, result.stderr
    assert "restored from the build cache" in result.stderr and "from the build cache" in result.stdout
    manifest = json.loads((tmp_path / "b" / "cnn-onnxruntime-cpu" / "manifest.json").read_text())
    cache = manifest["measured"]["cache"]
    assert cache["hit"] and cache["bundle"] == str((tmp_path / "a" / "cnn-onnxruntime-cpu").resolve())
    assert _files(manifest, tmp_path / "b" / "cnn-onnxruntime-cpu") == _files(first.manifest, first.bundle)
    assert _reproducible(manifest) == _reproducible(first.manifest)
    assert manifest["measured"]["latency_ms"] == first.manifest["measured"]["latency_ms"]  # the first build's figures

    monkeypatch.undo()
    monkeypatch.setenv("VDEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VDEPLOY_BUILD_CACHE", raising=False)
    again = vdeploy.build(str(model), "onnxruntime-cpu", out=tmp_path / "c", iters=3, no_cache=True)
    assert again.manifest["measured"]["cache"]["hit"] is False  # built again, not restored
    assert _files(again.manifest, again.bundle) == _files(first.manifest, first.bundle)  # reproducible bytes
    assert _reproducible(again.manifest) == _reproducible(first.manifest)  # two builds differ only in `measured`
    assert again.manifest["measured"]["stage_seconds"]["export"] > 0


def ort():
    return load_catalog(None).get("onnxruntime-cpu")


def first_request(model: Path, **changes) -> BuildRequest:
    from vdeploy.api import request_for

    return dataclasses.replace(request_for(str(model), ("onnxruntime-cpu",), iters=3), **changes)


def test_the_key_changes_with_every_input_of_the_build_and_only_with_those(saved_pt2, tmp_path):
    model = tmp_path / "cnn.pt2"
    shutil.copy(saved_pt2("cnn"), model)
    calib = tmp_path / "calib"
    calib.mkdir()
    (calib / "a.npy").write_bytes(b"1")
    base = build_key(first_request(model, calib=calib), ort())
    assert base == build_key(first_request(model, calib=calib, out_dir=tmp_path / "elsewhere"), ort())
    changed = [
        build_key(first_request(model, calib=calib, precision="fp16"), ort()),
        build_key(first_request(model, calib=calib, min_cosine=0.5), ort()),
        build_key(first_request(model, calib=calib, input_specs=("x:uniform:0:1",)), ort()),
        build_key(first_request(model, calib=calib), load_catalog(None).get("x86-cpu")),
    ]
    (calib / "a.npy").write_bytes(b"2")
    changed.append(build_key(first_request(model, calib=calib), ort()))
    model.write_bytes(model.read_bytes() + b"\0")
    changed.append(build_key(first_request(model, calib=calib), ort()))
    assert len({base, *changed}) == len(changed) + 1


def test_models_without_a_content_address_are_not_cached(tmp_path):
    import torch

    module = BuildRequest(model="net", targets=("onnxruntime-cpu",), source=torch.nn.ReLU())
    user_code = BuildRequest(model=str(tmp_path / "w.pt"), targets=("onnxruntime-cpu",), arch="mypkg.nets:make")
    assert build_key(module, ort()) is None and build_key(user_code, ort()) is None


def test_eviction_removes_the_least_recently_used_beyond_the_cap(tmp_path):
    import os
    import time

    for age, name in enumerate(["newest", "middle", "oldest"]):
        entry = tmp_path / name
        entry.mkdir()
        (entry / "entry.json").write_text(json.dumps({"bytes": 400}))
        os.utime(entry / "entry.json", (time.time() - 100 * age, time.time() - 100 * age))
    assert evict(tmp_path, cap_bytes=900) == ["oldest"]
    assert evict(tmp_path, cap_bytes=100, keep="middle") == ["newest"]  # the entry just stored is kept
    assert [p.name for p in tmp_path.iterdir()] == ["middle"]


def test_a_restored_bundle_is_signed_when_asked_and_verifies(saved_pt2, tmp_path, cache_on, cli):
    """The cache stores bundles unsigned (a restore writes its own manifest); `--sign` on a cache hit must still
    give a bundle whose signature holds, and a hit without `--sign` must not carry a stale signature."""
    import vdeploy

    model = tmp_path / "cnn.pt2"
    shutil.copy(saved_pt2("cnn"), model)
    private, public = vdeploy.keygen(tmp_path / "release")
    vdeploy.build(str(model), "onnxruntime-cpu", out=tmp_path / "a", iters=3, sign_key=private)
    signed = cli("build", model, "-t", "onnxruntime-cpu", "-o", tmp_path / "b", "--iters", "3", "--sign", private)
    assert signed.exit_code == 0 and "restored from the build cache" in signed.stderr
    bundle = tmp_path / "b" / "cnn-onnxruntime-cpu"
    assert cli("validate", bundle, "--verify", public, "--iters", "3").exit_code in (0, 3)
    plain = cli("build", model, "-t", "onnxruntime-cpu", "-o", tmp_path / "c", "--iters", "3")
    assert plain.exit_code == 0 and "restored from the build cache" in plain.stderr
    assert not (tmp_path / "c" / "cnn-onnxruntime-cpu" / "signature.json").exists()
