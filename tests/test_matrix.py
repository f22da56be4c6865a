"""`vdeploy matrix` on the embedded Ray (the default): a 3-model × 3-target release equals single builds, an
unchanged re-run builds nothing, --force rebuilds, a bad release file is one line and exit 1."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from tests.matrix_helpers import (
    MODELS,
    TARGETS,
    VENV_BIN,
    by_cell,
    ray_env,
    run_matrix,
    single_build_hashes,
    write_release,
)
from tests.models import GOLDEN

pytest.importorskip("ray")


@pytest.fixture(scope="module")
def golden_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("matrix-models")
    paths = {}
    for name in MODELS:
        build_fn, shape = GOLDEN[name]
        paths[name] = folder / f"{name}.pt2"
        torch.export.save(torch.export.export(build_fn(seed=0), (torch.randn(shape),)), str(paths[name]))
    return folder, paths


@pytest.fixture(scope="module")
def singles(golden_files, tmp_path_factory):
    _, paths = golden_files
    return single_build_hashes(paths, TARGETS, tmp_path_factory.mktemp("single"))


def test_embedded_matrix_equals_single_builds_and_resumes(golden_files, singles):
    folder, paths = golden_files
    release = write_release(folder, {m: {"path": p.name} for m, p in paths.items()}, TARGETS, name="embedded")
    code, data, stderr, first_wall = run_matrix(release)
    cells = by_cell(data)
    assert data["ray"]["address"] == "embedded" and data["built"] == 9 and len(cells) == 9
    for key, (verdict, files) in singles.items():
        cell = cells[key]
        assert cell["status"] == verdict == cell["verdict"], (key, cell.get("error"))
        assert cell["files"] == files, key  # same artifact hashes as the single build
        bundle = folder / "bundles" / f"{key[0]}-{key[1]}"
        assert cell["bundle"] == str(bundle) and (bundle / "report.html").is_file()  # where a single build puts it
        assert (folder / "bundles" / "release-logs" / f"{key[0]}__{key[1]}__default.log").read_text().count(
            "attempt build"
        ) == 1
    verdicts = {c["status"] for c in cells.values()}
    assert code == (3 if "fail" in verdicts else 0)
    html = (folder / "bundles" / "release.html").read_text()
    assert "vit-x86-cpu/report.html" in html and "<script" not in html
    assert json.loads((folder / "bundles" / "release.json").read_text())["cells"] == data["cells"]
    assert not list((folder / "bundles").glob(".*.tmp-*"))

    code2, again, stderr2, wall = run_matrix(release)  # nothing changed: no build, no Ray started
    print(f"unchanged re-run: {wall:.1f} s (first run {first_wall:.1f} s)")
    assert again["built"] == 0 and again["cached"] == 9 and again["ray"] is None and code2 == code
    assert all(c["cached"] and c["files"] == cells[k]["files"] for k, c in by_cell(again).items())


def test_force_rebuilds_and_a_changed_model_rebuilds(golden_files, tmp_path):
    folder, paths = golden_files
    model = tmp_path / "cnn.pt2"
    model.write_bytes(paths["cnn"].read_bytes())
    release = write_release(tmp_path, {"cnn": {"path": "cnn.pt2"}}, ["onnxruntime-cpu"], name="one")
    log = tmp_path / "bundles" / "release-logs" / "cnn__onnxruntime-cpu__default.log"
    assert run_matrix(release)[1]["built"] == 1
    assert run_matrix(release)[1]["built"] == 0
    code, forced, _, _ = run_matrix(release, "--force")
    assert code == 0 and forced["built"] == 1 and "attempt build" in log.read_text()
    build_fn, shape = GOLDEN["cnn"]  # another model file under the same name: its hash changes the cell's key
    torch.export.save(torch.export.export(build_fn(seed=1), (torch.randn(shape),)), str(model))
    assert run_matrix(release)[1]["built"] == 1


@pytest.mark.parametrize(
    "text, words",
    [
        ("models: []\ntargets: [onnxruntime-cpu]\n", "lists no models"),
        ("models: [{path: nope.pt2}]\ntargets: [onnxruntime-cpu]\n", "nope.pt2 not found"),
        ("models: [{path: m.pt2}]\ntargets: [no-such-chip]\n", "unknown target 'no-such-chip'"),
        ("models: [{path: m.pt2, budgets: {speed: 1}}]\ntargets: [onnxruntime-cpu]\n", "unknown budget"),
        ("models: [{path: m.pt2, colour: red}]\ntargets: [onnxruntime-cpu]\n", "colour"),
    ],
)
def test_bad_release_file_is_one_line(tmp_path, text, words):
    (tmp_path / "m.pt2").write_bytes(b"not read")
    (tmp_path / "r.yaml").write_text(text)
    proc = subprocess.run(
        [str(VENV_BIN / "vdeploy"), "matrix", str(tmp_path / "r.yaml")],
        env=ray_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and words in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "bundles").exists()
