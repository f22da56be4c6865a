"""`vdeploy matrix`: a 3-model × 3-target release on the embedded Ray (the default) and on a local two-node Ray
cluster (127.0.0.1, --ray-address) equals single builds; a worker killed mid-build is retried in another worker, a
build that segfaults its worker is reported in its cell while the others finish; the device step (`vdeploy validate`
for device: jetson) runs only on the node offering device:jetson; an unchanged re-run builds nothing, a tampered
bundle or --force rebuilds; progress is plain lines off a terminal and a live table on one; a bad release file is
one line and exit 1."""

from __future__ import annotations

import dataclasses
import json
import os
import pty
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.matrix_helpers import (
    MODELS,
    TARGETS,
    VENV_BIN,
    LocalCluster,
    attempt_pids,
    by_cell,
    free_port,
    matrix_command,
    ray_env,
    run_matrix,
    single_build_hashes,
    wait_for,
    write_release,
)
from tests.models import GOLDEN

pytest.importorskip("ray")

RELEASE_TARGETS = ["onnxruntime-cpu", "x86-cpu", {"name": "jetson", "device": "jetson"}]
JETSON = "jetson-orin-nano"


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


@pytest.fixture(scope="module")
def embedded(golden_files):
    """The release on the embedded Ray: (release file, exit code, release.json, wall seconds)."""
    folder, paths = golden_files
    release = write_release(folder, {m: {"path": p.name} for m, p in paths.items()}, RELEASE_TARGETS, name="embedded")
    code, data, _, wall = run_matrix(release)
    return release, code, data, wall


@pytest.fixture(scope="module")
def cluster():
    local = LocalCluster("jetson")
    try:
        yield local.start()
    finally:
        local.stop()


def assert_equals_singles(cells: dict, singles: dict, out: Path) -> None:
    for key, (verdict, files) in singles.items():
        cell = cells[key]
        assert cell["verdict"] == verdict, (key, cell.get("error"))
        assert cell["files"] == files, key  # same artifact hashes as the single build
        bundle = out / f"{key[0]}-{key[1]}"
        assert cell["bundle"] == str(bundle) and (bundle / "report.html").is_file()  # where a single build puts it


def test_embedded_matrix_equals_single_builds(golden_files, singles, embedded):
    folder, _ = golden_files
    _, code, data, _ = embedded
    cells = by_cell(data)
    assert data["ray"]["address"] == "embedded" and data["built"] == 9 and len(cells) == 9
    assert [n["address"] for n in data["ray"]["nodes"]] == ["127.0.0.1"]  # one node, loopback only
    assert_equals_singles(cells, singles, folder / "bundles")
    for (model, target), cell in cells.items():
        log = folder / "bundles" / "release-logs" / f"{model}__{target}__default.log"
        assert cell["log"] == str(log) and len(attempt_pids(log)) == 1 == cell["attempts"]
        assert "vdeploy: " in log.read_text()  # the build's own progress is kept per task
        if target == JETSON:  # no node offers device:jetson here: the device step is skipped, and says so
            device = cell["device_validation"]
            assert device["status"] == "skipped" and "device:jetson" in device["reason"]
            assert cell["status"] == cell["verdict"]
        else:
            assert cell["status"] == cell["verdict"] and cell["device_validation"] is None
    verdicts = {c["status"] for c in cells.values()}
    assert code == data["exit_code"] == (3 if "fail" in verdicts else 0)
    html = (folder / "bundles" / "release.html").read_text()
    assert 'href="vit-x86-cpu/report.html"' in html and "<script" not in html
    assert json.loads((folder / "bundles" / "release.json").read_text())["cells"] == data["cells"]
    assert not list((folder / "bundles").glob(".*.tmp-*"))


def test_unchanged_rerun_builds_nothing_with_plain_and_live_progress(embedded):
    release, code, data, first_wall = embedded
    started = time.perf_counter()
    proc = subprocess.run(
        [str(VENV_BIN / "vdeploy"), "matrix", str(release)], env=ray_env(), capture_output=True, text=True, timeout=120
    )
    wall = time.perf_counter() - started
    print(f"unchanged re-run: {wall:.1f} s (first run {first_wall:.1f} s)")
    again = json.loads((release.parent / "bundles" / "release.json").read_text())
    assert proc.returncode == code and again["built"] == 0 and again["cached"] == 9 and again["ray"] is None
    assert all(c["cached"] and c["files"] == by_cell(data)[k]["files"] for k, c in by_cell(again).items())
    lines = [line for line in proc.stderr.splitlines() if line.startswith("vdeploy matrix: ")]  # CI: plain lines
    assert len(lines) == 9, proc.stderr
    assert all(line.endswith(": cached (unchanged, bundle verified)") for line in lines), lines
    assert "9 cells, 0 built, 9 unchanged" in proc.stdout

    leader, follower = pty.openpty()  # on a terminal: a live rich table
    live = subprocess.Popen(
        [str(VENV_BIN / "vdeploy"), "matrix", str(release)], env=ray_env(), stdout=follower, stderr=follower
    )
    os.close(follower)
    screen = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if select.select([leader], [], [], 1)[0]:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
        elif live.poll() is not None:
            break
    os.close(leader)
    assert live.wait(timeout=30) == code
    text = screen.decode(errors="replace")
    assert "vdeploy matrix" in text and "attempts" in text and "cached" in text and "\x1b[" in text
    assert "vdeploy matrix: " not in text  # no plain lines on a terminal


def test_force_rebuilds_and_a_tampered_bundle_or_changed_model_is_not_reused(golden_files, embedded, tmp_path):
    from vdeploy.matrix.cellkey import cached_record, cell_key
    from vdeploy.matrix.release import cells, load_release

    folder, paths = golden_files
    bundles = folder / "bundles"
    shutil.copy(paths["cnn"], tmp_path / "cnn.pt2")  # another path, the same bytes: the embedded run's cell
    release = write_release(tmp_path, {"cnn": {"path": "cnn.pt2"}}, ["onnxruntime-cpu"], name="one", out=str(bundles))
    before = by_cell(embedded[2])[("cnn", "onnxruntime-cpu")]
    code, first, _, _ = run_matrix(release)
    assert code == 0 and first["built"] == 0 and first["ray"] is None  # resume is by content, not by path

    loaded, base = load_release(release)
    (cell,) = cells(loaded, base, bundles)
    model_file = bundles / "cnn-onnxruntime-cpu" / "model.onnx"
    original = model_file.read_bytes()
    model_file.write_bytes(original + b"\0")  # the bundle no longer verifies: not reused
    assert cached_record(bundles, cell, cell_key(cell)) is None
    model_file.write_bytes(original)
    assert cached_record(bundles, cell, cell_key(cell)) is not None

    proc = subprocess.run(  # off a terminal, without --json: plain progress lines, one per state change
        [str(VENV_BIN / "vdeploy"), "matrix", str(release), "--force"],
        env=ray_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    forced = json.loads((bundles / "release.json").read_text())
    assert proc.returncode == 0 and forced["built"] == 1 and forced["cells"][0]["files"] == before["files"]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("vdeploy matrix: ")]
    states = [line.split(": ")[2].split(" ")[0] for line in lines]
    assert states == ["queued", "running", "pass"], proc.stderr
    log = bundles / "release-logs" / "cnn__onnxruntime-cpu__default.log"
    assert attempt_pids(log) == [forced["cells"][0]["pid"]]  # the cell's log is its latest build's

    build_fn, shape = GOLDEN["cnn"]  # another model under the same name: its hash changes the key, so it rebuilds
    torch.export.save(torch.export.export(build_fn(seed=1), (torch.randn(shape),)), str(tmp_path / "cnn.pt2"))
    assert cached_record(bundles, cell, cell_key(cell)) is None


def test_cluster_matrix_survives_a_killed_worker_and_a_crashing_build(golden_files, singles, cluster, tmp_path):
    """Through --ray-address: the 3 × 3 matrix, plus `held` (its first worker is SIGKILLed mid-build) and `crash`
    (its model code segfaults the worker on every try); jetson cells are validated on the device node."""
    import psutil

    from tests.matrix_faults import INPUT_SHAPE, small_cnn

    _, paths = golden_files
    shutil.copy(Path(__file__).with_name("matrix_faults.py"), tmp_path / "matrix_faults.py")
    models = {m: {"path": str(p)} for m, p in paths.items()}
    for name in ("held", "crash"):
        torch.save(small_cnn().state_dict(), tmp_path / f"{name}.pt")
        models[name] = {
            "path": f"{name}.pt",
            "arch": f"matrix_faults:{name}",
            "input_shape": INPUT_SHAPE,
            "targets": ["onnxruntime-cpu"],
        }
    release = write_release(tmp_path, models, RELEASE_TARGETS, name="cluster", retries=1, python_path=["."])
    with open(tmp_path / "stdout", "w") as out, open(tmp_path / "stderr", "w") as err:
        proc = subprocess.Popen(
            matrix_command(release, "--ray-address", cluster.address), env=cluster.env, stdout=out, stderr=err
        )
        try:
            pids = tmp_path / "held.pids"
            killed = wait_for(lambda: pids.is_file() and int(pids.read_text().split()[0]), 300, "the held build")
            worker = psutil.Process(killed)
            assert worker.cmdline()[0].startswith("ray::")  # a Ray worker process, running the task
            worker.kill()
            proc.wait(timeout=500)
        finally:
            proc.kill()
    stdout = (tmp_path / "stdout").read_text()
    assert stdout.strip(), (tmp_path / "stderr").read_text()[-3000:]
    data = json.loads(stdout)
    cells = by_cell(data)
    assert data["ray"]["address"] == cluster.address and len(cells) == 11
    assert {n["id"]: n["address"] for n in data["ray"]["nodes"]} == {
        cluster.head_id: "127.0.0.1",
        cluster.worker_id: "127.0.0.1",
    }
    assert_equals_singles(cells, singles, tmp_path / "bundles")
    assert {c["node"] for c in cells.values() if c.get("node")} == {cluster.head_id, cluster.worker_id}
    for (model, target), cell in cells.items():
        if target == JETSON:  # the device step ran on the device node only, after the build (wherever that ran)
            device = cell["device_validation"]
            assert device["node"] == cluster.worker_id and device["status"] == cell["status"] == "unverified"
            log = tmp_path / "bundles" / "release-logs" / f"{model}__{target}__default.log"
            assert attempt_pids(log, "validate") == [device["pid"]]

    held = cells[("held", "onnxruntime-cpu")]
    log = Path(held["log"])
    assert held["status"] == "pass" and held["attempts"] == 2, held
    assert attempt_pids(log) == [killed, held["pid"]] and held["pid"] != killed  # retried in another worker
    crash = cells[("crash", "onnxruntime-cpu")]
    assert crash["status"] == "crashed" and crash["attempts"] == 2 and "died" in crash["error"], crash
    assert crash.get("bundle") is None and not (tmp_path / "bundles" / "crash-onnxruntime-cpu").exists()
    assert proc.returncode == 1 == data["exit_code"]  # a crashed cell is an error; everything else finished
    html = (tmp_path / "bundles" / "release.html").read_text()
    assert "crashed" in html and 'href="held-onnxruntime-cpu/report.html"' in html


def test_device_steps_skipped_before_run_alone_once_a_device_node_joins(embedded, cluster):
    """The embedded run had no device:jetson node (skipped); the same release on the cluster builds nothing and runs
    only the three device steps, on the device node."""
    release = embedded[0]
    code, data, _, _ = run_matrix(release, "--ray-address", cluster.address, env=cluster.env)
    cells = by_cell(data)
    assert data["built"] == 0 and data["ray"]["address"] == cluster.address and code == embedded[1]
    for (_, target), cell in cells.items():
        device = cell["device_validation"]
        if target == JETSON:
            assert device["node"] == cluster.worker_id and device["status"] == cell["status"] == "unverified"
        else:
            assert device is None
    again = run_matrix(release, "--ray-address", cluster.address, env=cluster.env)[1]
    assert again["built"] == 0 and again["ray"] is None  # every device step has its verdict now: nothing to run


def test_a_fit_release_searches_each_cell_and_resumes(golden_files, tmp_path):
    """`fit:` in the release file: the cell is `vdeploy build --fit` (chosen plan's bundle, plan.json, the fit section);
    an unchanged re-run reuses it; other fit settings are another cell key."""
    from vdeploy.matrix.cellkey import cell_key
    from vdeploy.matrix.release import cells, load_release

    _, paths = golden_files
    shutil.copy(paths["vit"], tmp_path / "vit.pt2")
    fit = {"budget_s": 120, "levers": ["precision"]}
    release = write_release(tmp_path, {"vit": {"path": "vit.pt2"}}, ["onnxruntime-cpu"], name="fit", fit=fit)
    code, data, stderr, _ = run_matrix(release)
    (cell,) = data["cells"]
    assert code in (0, 3) and cell["status"] in ("pass", "fail"), stderr[-2000:]
    bundle = Path(cell["bundle"])
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert {t["choices"].get("precision") for t in manifest["fit"]["trials"]} >= {"fp32", "int8"}
    assert (bundle / "plan.json").is_file()
    again = run_matrix(release)[1]
    assert again["built"] == 0 and again["ray"] is None
    loaded, base = load_release(release)
    (planned,) = cells(loaded, base)
    other = dataclasses.replace(planned, fit={**planned.fit, "budget_s": 60})
    assert cell_key(other) != cell_key(planned)


def test_a_build_past_timeout_s_is_stopped_and_the_others_finish(golden_files, tmp_path):
    """`timeout_s` in the release file: the held build (it sleeps in its model code) is cancelled, its worker killed,
    its cell an error naming the timeout; the other cell builds; exit 1."""
    import psutil

    from tests.matrix_faults import INPUT_SHAPE, small_cnn

    _, paths = golden_files
    shutil.copy(Path(__file__).with_name("matrix_faults.py"), tmp_path / "matrix_faults.py")
    shutil.copy(paths["cnn"], tmp_path / "cnn.pt2")
    torch.save(small_cnn().state_dict(), tmp_path / "held.pt")
    models = {
        "cnn": {"path": "cnn.pt2"},
        "held": {"path": "held.pt", "arch": "matrix_faults:held", "input_shape": INPUT_SHAPE},
    }
    release = write_release(
        tmp_path, models, ["onnxruntime-cpu"], name="timeout", timeout_s=8, retries=0, python_path=["."]
    )
    code, data, stderr, _ = run_matrix(release)
    cells = by_cell(data)
    assert code == 1, stderr[-2000:]
    held = cells[("held", "onnxruntime-cpu")]
    assert held["status"] == "error" and "ran past timeout_s 8 s" in held["error"]
    assert cells[("cnn", "onnxruntime-cpu")]["status"] == "pass"
    (pid,) = map(int, (tmp_path / "held.pids").read_text().split())
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 30, "exit")


@pytest.mark.parametrize(
    "text, words",
    [
        ("models: []\ntargets: [onnxruntime-cpu]\n", "lists no models"),
        ("models: [{path: nope.pt2}]\ntargets: [onnxruntime-cpu]\n", "nope.pt2 not found"),
        ("models: [{path: m.pt2}]\ntargets: [no-such-chip]\n", "unknown target 'no-such-chip'"),
        ("models: [{path: m.pt2, budgets: {speed: 1}}]\ntargets: [onnxruntime-cpu]\n", "unknown budget"),
        ("models: [{path: m.pt2, colour: red}]\ntargets: [onnxruntime-cpu]\n", "colour"),
        ("models: [{path: m.pt2, options: {iters: ten}}]\ntargets: [onnxruntime-cpu]\n", "iters: Input should be"),
        ("models: [{path: m.pt2, precisions: [int4]}]\ntargets: [x86-cpu]\n", "x86-cpu offers no precision"),
        ("fit: {levers: [warp]}\nmodels: [{path: m.pt2}]\ntargets: [x86-cpu]\n", "unknown lever(s) ['warp']"),
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


def test_a_tvm_cell_is_seeded_with_its_last_bundles_tuning_records(tmp_path):
    from vdeploy.matrix.release import Cell
    from vdeploy.matrix.runner import with_tuning_seed
    from vdeploy.pipeline import BuildRequest

    def cell(target: str) -> Cell:
        return Cell("m", target, None, BuildRequest(model=str(tmp_path / "m.pt2"), targets=(target,), out_dir=tmp_path))

    assert with_tuning_seed(cell("x86-cpu-tvm")).tuning_db == ()  # no earlier bundle: nothing to seed
    for target in ("x86-cpu-tvm", "onnxruntime-cpu"):
        (tmp_path / f"m-{target}" / "tuning").mkdir(parents=True)
    assert with_tuning_seed(cell("x86-cpu-tvm")).tuning_db == (tmp_path / "m-x86-cpu-tvm",)
    assert with_tuning_seed(cell("onnxruntime-cpu")).tuning_db == ()  # not a TVM target


def test_an_unreachable_cluster_is_one_line_at_once(tmp_path):
    (tmp_path / "m.pt2").write_bytes(b"not read")  # never built: the address fails first
    (tmp_path / "r.yaml").write_text("models: [{path: m.pt2}]\ntargets: [onnxruntime-cpu]\n")
    address = f"127.0.0.1:{free_port()}"
    proc = subprocess.run(
        [str(VENV_BIN / "vdeploy"), "matrix", str(tmp_path / "r.yaml"), "--ray-address", address],
        env=ray_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and f"no Ray cluster answers at {address}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "bundles" / "m-onnxruntime-cpu").exists()
