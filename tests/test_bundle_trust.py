"""Issue 15, defects 6-7: `vdeploy validate` reads and runs only what the bundle holds and hashes, passes the runtime
only allow-listed options, and (with --verify) accepts only a bundle signed by the release key, every file covered."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

import vdeploy


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return vdeploy.keygen(tmp_path_factory.mktemp("keys") / "release")


@pytest.fixture(scope="module")
def signed_bundle(saved_pt2, keys, tmp_path_factory):
    out = tmp_path_factory.mktemp("signed")
    return vdeploy.build(str(saved_pt2("cnn")), "onnxruntime-cpu", out=out, iters=3, sign_key=keys[0]).bundle


@pytest.fixture(scope="module")
def unsigned_bundle(saved_pt2, tmp_path_factory):
    return vdeploy.build(str(saved_pt2("cnn")), "onnxruntime-cpu", out=tmp_path_factory.mktemp("plain"), iters=3).bundle


@pytest.fixture(scope="module")
def openvino_bundle(saved_pt2, tmp_path_factory):
    out = tmp_path_factory.mktemp("ov")
    return vdeploy.build(str(saved_pt2("cnn")), "x86-cpu", out=out, iters=3, runtime="openvino").bundle


@pytest.fixture
def copy(tmp_path):
    def make(source):
        path = tmp_path / "bundle"
        shutil.copytree(source, path)
        return path

    return make


def edit_manifest(path, change):
    manifest = json.loads((path / "manifest.json").read_text())
    change(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2))


def refused(cli, path, *needles, args=()):
    result = cli("validate", path, "--iters", 2, *args)
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "internal error" not in line, line
    for needle in needles:
        assert needle in line, line
    return line


# ---- defect 6: paths, hashes and options from the manifest ------------------------------------------------------


@pytest.mark.parametrize("where", ["../../../../../../../../etc/passwd", "/etc/passwd"])
def test_files_entry_outside_the_bundle_is_not_read(cli, unsigned_bundle, copy, where):
    path = copy(unsigned_bundle)
    sha = hashlib.sha256(open("/etc/passwd", "rb").read()).hexdigest()
    edit_manifest(path, lambda m: m["files"].append({"path": where, "sha256": sha, "bytes": 1}))
    refused(cli, path, f"the manifest's file {where!r}", "validate reads only files inside the bundle")


def test_artifact_entry_outside_the_bundle_is_not_run(cli, unsigned_bundle, copy, tmp_path):
    path = copy(unsigned_bundle)
    shutil.copy(path / "model.onnx", tmp_path / "elsewhere.onnx")

    def point_outside(manifest):
        manifest["artifact"]["entry"] = "../elsewhere.onnx"
        manifest["artifact"]["files"] = ["../elsewhere.onnx"]

    edit_manifest(path, point_outside)
    refused(cli, path, "artifact entry '../elsewhere.onnx' climbs out of the bundle")


def test_artifact_file_dropped_from_files_cannot_be_swapped(cli, unsigned_bundle, copy):
    path = copy(unsigned_bundle)
    edit_manifest(path, lambda m: m.update(files=[f for f in m["files"] if f["path"] != "model.onnx"]))
    refused(cli, path, "model.onnx is used by validate but not listed (with its sha256)")


def test_symlinked_bundle_file_is_refused_even_with_the_right_hash(cli, unsigned_bundle, copy, tmp_path):
    path = copy(unsigned_bundle)
    shutil.move(path / "model.onnx", tmp_path / "outside.onnx")
    (path / "model.onnx").symlink_to(tmp_path / "outside.onnx")  # same bytes: the sha256 still matches
    refused(cli, path, "'model.onnx' goes through a symbolic link")


@pytest.mark.parametrize("key", ["files", "artifact"])
def test_manifest_without_files_or_artifact_is_a_bundle_error_not_a_key_error(cli, unsigned_bundle, copy, key):
    path = copy(unsigned_bundle)
    edit_manifest(path, lambda m: m.pop(key))
    refused(cli, path, f"has no {key!r}: it is not a complete vdeploy manifest")


def test_openvino_cache_dir_from_a_manifest_never_reaches_the_runtime(cli, openvino_bundle, copy, tmp_path):
    path = copy(openvino_bundle)
    cache = tmp_path / "written-by-openvino"
    edit_manifest(path, lambda m: m["artifact"]["options"].update(CACHE_DIR=str(cache)))
    refused(cli, path, "artifact option 'CACHE_DIR' is not on the openvino backend's allow-list")
    assert not cache.exists()


# ---- defect 7: signatures ----------------------------------------------------------------------------------------


def test_signed_bundle_verifies_with_the_release_key(cli, signed_bundle, keys):
    result = cli("validate", signed_bundle, "--iters", 2, "--verify", keys[1])
    assert result.exit_code == 0, result.stderr
    assert "signature: verified, key sha256:" in result.stdout
    report = vdeploy.validate(signed_bundle, iters=2, verify_key=keys[1]).report  # the Python API, the same check
    assert report["signature"]["state"] == "verified"
    signed = json.loads((signed_bundle / "signature.json").read_text())
    assert [f["path"] for f in signed["files"]] == ["manifest.json", "model.onnx", "reference_io.npz", "report.html"]


def loosen_tolerance(path):
    edit_manifest(path, lambda m: m["budgets"]["numerics"].update(min_cosine=0.01, max_rel_err=0.99))


def raise_budget(path):
    edit_manifest(path, lambda m: m["budgets"].update(latency_ms=1e9))


def edit_report(path):
    (path / "report.html").write_text((path / "report.html").read_text().replace("PASS", "PASS (checked)"))


def add_file(path):
    (path / "notes.txt").write_text("not part of the release")


def remove_file(path):
    (path / "reference_io.npz").unlink()


@pytest.mark.parametrize(
    ("tamper", "needle"),
    [
        (loosen_tolerance, "manifest.json was changed after the bundle was signed"),
        (raise_budget, "manifest.json was changed after the bundle was signed"),
        (edit_report, "report.html was changed after the bundle was signed"),
        (add_file, "notes.txt was added after the bundle was signed"),
        (remove_file, "reference_io.npz was signed but is missing"),
    ],
)
def test_tampered_signed_bundle_fails_verification(cli, signed_bundle, keys, copy, tamper, needle):
    path = copy(signed_bundle)
    tamper(path)
    refused(cli, path, "signature: ", needle, args=("--verify", keys[1]))
    refused(cli, path, needle)  # a signature that no longer holds fails without --verify too


def test_bundle_edited_and_re_signed_by_another_key_fails(cli, signed_bundle, keys, copy, tmp_path):
    from vdeploy.signing import load_private_key, sign_bundle

    path = copy(signed_bundle)
    loosen_tolerance(path)
    other, _ = vdeploy.keygen(tmp_path / "attacker")
    sign_bundle(path, load_private_key(other))
    refused(cli, path, "not by the trusted key", args=("--verify", keys[1]))


def test_unsigned_bundle_says_unsigned_and_fails_verify(cli, unsigned_bundle, keys):
    path = unsigned_bundle
    result = cli("validate", path, "--iters", 2)
    assert result.exit_code == 0 and "signature: unsigned" in result.stdout
    refused(cli, path, "is unsigned (no signature.json)", args=("--verify", keys[1]))


def test_build_with_a_public_key_as_sign_key_fails_before_any_work(cli, saved_pt2, keys, tmp_path):
    out = tmp_path / "out"
    result = cli("build", saved_pt2("cnn"), "--target", "onnxruntime-cpu", "--out", out, "--sign", keys[1])
    assert result.exit_code == 1 and "is a public key; --sign takes the private key" in result.stderr
    assert not out.exists()


def test_keygen_never_overwrites_a_key(cli, keys):
    result = cli("keygen", keys[0])
    assert result.exit_code == 1 and "a key is never overwritten" in result.stderr
