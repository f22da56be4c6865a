"""The bundle appears whole or not at all."""

from __future__ import annotations

import pytest

from vdeploy.bundle import SCHEMA, BundleWriter, read_manifest


def test_failure_inside_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with BundleWriter(out, "m-t") as writer:
            (writer.tmp / "model.onnx").write_bytes(b"half")
            raise RuntimeError("compiler died")
    assert not out.exists()


def test_failure_keeps_the_previous_bundle(tmp_path):
    with BundleWriter(tmp_path, "m-t") as writer:
        (writer.tmp / "a.bin").write_bytes(b"v1")
        writer.finish({"schema": SCHEMA, "verdict": "pass"})
    with pytest.raises(KeyboardInterrupt):
        with BundleWriter(tmp_path, "m-t") as writer:
            (writer.tmp / "a.bin").write_bytes(b"v2-partial")
            raise KeyboardInterrupt
    assert (tmp_path / "m-t" / "a.bin").read_bytes() == b"v1"
    assert [p.name for p in tmp_path.iterdir()] == ["m-t"]


def test_manifest_lists_files_with_hashes(tmp_path):
    with BundleWriter(tmp_path, "m-t") as writer:
        (writer.tmp / "sub").mkdir()
        (writer.tmp / "sub" / "x.txt").write_text("abc")
        files = writer.file_entries()
        final = writer.finish({"files": files})
    assert files == [
        {"path": "sub/x.txt", "bytes": 3, "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}
    ]
    assert read_manifest(final)["files"] == files
