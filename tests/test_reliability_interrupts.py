"""Issue 15, defect 3: SIGTERM/SIGHUP (what CI runners and `timeout` send) are handled like Ctrl-C; the artifact worker
dies with its parent and has a deadline of its own; SIGKILL leftovers are swept by the next build.

benchmarks/interrupt_matrix.py runs SIGINT/SIGTERM/SIGKILL at every stage of a real build; these are the guards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

VDEPLOY = str(Path(sys.executable).with_name("vdeploy"))
WORKER = "vdeploy.validate.worker"


def children_running(parent_pid: int | None, marker: str) -> list[int]:
    """Pids of live processes whose command line holds `marker` (and whose parent is `parent_pid`, if given)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if marker in cmdline and state != "Z" and (parent_pid is None or int(ppid) == parent_pid):
            found.append(int(entry.name))
    return found


def wait_for(predicate, timeout_s: float, step_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step_s)
    return predicate()


def gone(pids: list[int]) -> bool:
    return not any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in pids)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM])
def test_sigterm_during_validation_leaves_no_temp_dir_and_no_worker(saved_pt2, tmp_path, sig):
    """Before the fix: killed by SIGTERM (rc -15), the hidden .NAME.tmp-* dir stayed in --out, the job dir in the
    temp dir, and the artifact worker kept running."""
    tmpdir, out = tmp_path / "tmp", tmp_path / "out"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    cmd = [VDEPLOY, "build", str(saved_pt2("cnn")), "-t", "onnxruntime-cpu", "--out", str(out), "--iters", "100000000"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "validating" in line:
                break
        workers = wait_for(lambda: children_running(proc.pid, WORKER), 120)
        assert workers, "".join(lines)
        time.sleep(1.0)  # the worker is inside its timed loop
        proc.send_signal(sig)
        rest = proc.stderr.read()
        code = proc.wait(60)
        worker_gone = wait_for(lambda: gone(workers), 10)
    finally:
        proc.kill()
        orphans = children_running(None, str(tmpdir))
        for pid in orphans:
            os.kill(pid, signal.SIGKILL)
    assert code == 1, rest
    assert rest.strip().splitlines()[-1].startswith(f"interrupted by {sig.name}")
    assert worker_gone, "the artifact worker outlived the CLI"
    assert not out.exists() or list(out.iterdir()) == []
    assert list(tmpdir.iterdir()) == []


def _tiny_artifact(work: Path):
    from onnx import TensorProto, helper

    from vdeploy.backends import get_backend
    from vdeploy.backends.base import CompileJob

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
    )
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 18)])
    return get_backend("onnxruntime").compile(CompileJob(model, "fp32", work))


RUN_FOREVER = """
import sys, numpy as np
from pathlib import Path
from vdeploy.backends.base import Artifact
from vdeploy.validate.isolate import run_artifact
artifact = Artifact.from_dict({artifact!r})
run_artifact(artifact, Path({work!r}), {{"x": np.zeros((1, 1, 8), np.float32)}}, warmup=0, iters=10**9)
"""


def test_artifact_worker_dies_when_its_parent_is_killed(tmp_path):
    """Before the fix: SIGKILL the process that runs the artifact and its worker runs on, orphaned."""
    artifact = _tiny_artifact(tmp_path)
    script = RUN_FOREVER.format(artifact=artifact.to_dict(), work=str(tmp_path))
    parent = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "TMPDIR": str(tmp_path)})
    try:
        workers = wait_for(lambda: children_running(parent.pid, WORKER), 60)
        assert workers, "no worker started"
        time.sleep(1.0)
        parent.kill()
        parent.wait(10)
        worker_gone = wait_for(lambda: gone(workers), 10)
    finally:
        parent.kill()
        for pid in children_running(None, str(tmp_path)):
            os.kill(pid, signal.SIGKILL)
    assert worker_gone, "the worker outlived its parent"


def test_artifact_worker_stops_at_its_own_deadline(tmp_path):
    """Before the fix: the worker had no deadline; with a hung or gone parent it ran for ever."""
    artifact = _tiny_artifact(tmp_path)
    job = tmp_path / "job"
    job.mkdir()
    np.savez(job / "inputs.npz", x=np.zeros((1, 1, 8), np.float32))
    spec = {"artifact": artifact.to_dict(), "bundle_dir": str(tmp_path), "warmup": 0, "iters": 10**9}
    (job / "job.json").write_text(json.dumps({**spec, "deadline_s": 3}))
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", WORKER, str(job)], capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("the worker ignored its deadline")
    assert proc.returncode != 0 and time.monotonic() - started < 90
    assert "deadline" in json.loads((job / "error.json").read_text())["message"]


def test_sigterm_and_sighup_raise_like_ctrl_c_while_building():
    from vdeploy.interrupts import Interrupted, handled

    before = signal.getsignal(signal.SIGTERM)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        with pytest.raises(KeyboardInterrupt) as info:
            with handled():
                os.kill(os.getpid(), sig)
                time.sleep(5)  # the handler raises at the next bytecode
        assert isinstance(info.value, Interrupted) and info.value.signal == sig
    assert signal.getsignal(signal.SIGTERM) == before


def test_sigkill_leftovers_are_swept_by_the_next_build(tmp_path):
    """Before the fix: .NAME.tmp-* dirs of SIGKILLed builds (and .NAME.old-PID) stayed in --out for ever. A live
    concurrent build's temp dir is never touched."""
    from vdeploy.bundle import SCHEMA, BundleWriter

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    stale = [out / f".m-t.tmp-{dead.pid}-abcd1234", out / f".m-t.old-{dead.pid}", out / ".m-t.tmp-x8k2p0qz"]
    for path in stale:
        path.mkdir()
        (path / "model.bin").write_bytes(b"\0" * 1000)
        os.utime(path, (time.time() - 7200, time.time() - 7200))
    killed_between_renames = out / f".m2-t.old-{dead.pid}"  # an older version's last good bundle, m2-t missing
    killed_between_renames.mkdir()
    (killed_between_renames / "manifest.json").write_text(json.dumps({"schema": SCHEMA, "files": []}))
    os.utime(killed_between_renames, (time.time() - 7200, time.time() - 7200))
    with BundleWriter(out, "m-t") as live:  # a build that is running right now, in this process
        (live.tmp / "model.bin").write_bytes(b"live")
        with BundleWriter(out, "m-t") as next_build:
            next_build.finish({"schema": SCHEMA, "files": next_build.file_entries()})
        assert live.tmp.exists() and (live.tmp / "model.bin").read_bytes() == b"live"
        live.finish({"schema": SCHEMA, "files": live.file_entries()})
    assert sorted(p.name for p in out.iterdir()) == ["m-t", "m2-t"]  # the old good bundle put back, not deleted
