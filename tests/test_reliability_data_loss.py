"""Issue 15, defect 5: replacing a bundle never destroys what is not a vdeploy bundle.

A model stored inside the bundle it would replace, a regular file (or a folder of the user's) where the bundle goes:
refused before any work, exit 1, one line, nothing touched.
"""

from __future__ import annotations

import json
import shutil

from vdeploy.bundle import SCHEMA


def _fake_bundle(path):
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"schema": SCHEMA, "files": []}))


def test_model_inside_the_bundle_it_replaces_is_refused(cli, saved_pt2, tmp_path):
    """Before the fix: exit 0 and the model file was deleted with the old bundle."""
    bundle = tmp_path / "out" / "cnn-onnxruntime-cpu"
    _fake_bundle(bundle)
    model = bundle / "cnn.pt2"
    shutil.copy(saved_pt2("cnn"), model)
    result = cli("build", model, "--target", "onnxruntime-cpu", "--out", tmp_path / "out", "--iters", "1")
    assert result.exit_code == 1
    assert "inside the bundle" in result.stderr and "loading" not in result.stderr  # refused before any work
    assert model.read_bytes() == saved_pt2("cnn").read_bytes()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cnn-onnxruntime-cpu"]


def test_a_file_where_the_bundle_goes_is_refused_not_moved_aside(cli, saved_pt2, tmp_path):
    """Before the fix: the file was renamed to a hidden .NAME.old-PID and never seen again."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "cnn-onnxruntime-cpu").write_text("my notes")
    result = cli("build", saved_pt2("cnn"), "--target", "onnxruntime-cpu", "--out", out, "--iters", "1")
    assert result.exit_code == 1
    assert "not a vdeploy bundle" in result.stderr and "loading" not in result.stderr
    assert [p.name for p in out.iterdir()] == ["cnn-onnxruntime-cpu"]
    assert (out / "cnn-onnxruntime-cpu").read_text() == "my notes"


def test_a_folder_of_other_files_where_the_bundle_goes_is_refused(cli, saved_pt2, tmp_path):
    folder = tmp_path / "out" / "cnn-onnxruntime-cpu"
    folder.mkdir(parents=True)
    (folder / "thesis.tex").write_text("years of work")
    result = cli("build", saved_pt2("cnn"), "--target", "onnxruntime-cpu", "--out", tmp_path / "out", "--iters", "1")
    assert result.exit_code == 1 and "not a vdeploy bundle" in result.stderr
    assert (folder / "thesis.tex").read_text() == "years of work"
