"""The vendor-toolchain mechanism on a tiny toolchain (a venv with no packages) and hand-written workers."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from vdeploy.backends import toolchains
from vdeploy.backends.toolchains import Toolchain, ToolchainError, ToolchainMissingError

PROTOCOL = Path(toolchains.__file__).with_name("toolchain_workers") / "_protocol.py"

WORKERS = {
    "echo": "from _protocol import serve, progress\n"
    "def handle(req):\n"
    "    progress('halfway'); print('vendor chatter on stdout')\n"
    "    return {'echo': req['x'] * 2}\n"
    "serve(handle)\n",
    "refuse": "from _protocol import serve, WorkerError\n"
    "def handle(req):\n    raise WorkerError('model too big', 'use a smaller one')\n"
    "serve(handle)\n",
    "crash": "import os, sys\nsys.stdin.read()\nprint('about to die', file=sys.stderr, flush=True)\nos.abort()\n",
    "hang": "import subprocess, sys, time\nsys.stdin.read()\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\ntime.sleep(120)\n",
    "garbage": "import sys\nsys.stdin.read()\nprint('this is not json')\n",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("toolchain")
    script = root / "tiny.sh"
    script.write_text(
        '#!/usr/bin/env bash\nset -e\necho "progress: making the venv"\n"$PYTHON" -m venv --without-pip "$1"\n'
    )
    workers = root / "workers"
    workers.mkdir()
    shutil.copy(PROTOCOL, workers / "_protocol.py")
    for name, text in WORKERS.items():
        (workers / f"{name}.py").write_text(text)
    os.environ["VDEPLOY_CACHE"] = str(root / "cache")
    entry = Toolchain(name="tiny", requirements=(), probe=("nothing-here",), script=script, workers=workers)
    lines: list[str] = []
    venv = toolchains.install(entry, lines.append)
    yield entry, venv, lines
    os.environ.pop("VDEPLOY_CACHE", None)


def test_missing_toolchain_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("VDEPLOY_CACHE", str(tmp_path))
    with pytest.raises(ToolchainMissingError) as info:
        toolchains.require("rknn")
    assert "the rknn toolchain is not installed" in info.value.message
    assert info.value.hint == "run `vdeploy toolchain install rknn`"
    with pytest.raises(ToolchainMissingError):
        toolchains.call("rknn", "rknn_worker", {}, timeout_s=5)


def test_install_is_atomic_recorded_and_idempotent(tiny):
    entry, venv, lines = tiny
    assert venv == toolchains.venv_dir(entry) and toolchains.installed(entry)
    assert venv.name == f"tiny-{entry.pins_hash()}"
    assert "making the venv" in lines  # the script's progress lines are forwarded
    assert toolchains.record(entry)["python"].startswith("3.")
    assert toolchains.versions(entry) == {}  # the probed distribution is not in the venv
    assert not [p for p in venv.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    mtime = (venv / toolchains.RECORD).stat().st_mtime
    assert toolchains.install(entry) == venv and (venv / toolchains.RECORD).stat().st_mtime == mtime


def test_failed_install_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("VDEPLOY_CACHE", str(tmp_path))
    script = tmp_path / "bad.sh"
    script.write_text('#!/usr/bin/env bash\n"$PYTHON" -m venv --without-pip "$1"\nexit 7\n')
    entry = Toolchain(name="bad", requirements=(), script=script)
    with pytest.raises(ToolchainError, match="exit 7"):
        toolchains.install(entry)
    assert not toolchains.installed(entry)
    assert sorted(p.name for p in (tmp_path / "toolchains").iterdir()) == [
        f"{toolchains.venv_dir(entry).name}.install.log"
    ]


def test_call_round_trip_with_progress_and_log(tiny, tmp_path):
    entry, _, _ = tiny
    seen: list[str] = []
    log = tmp_path / "worker.log"
    assert toolchains.call(entry, "echo", {"x": 21}, timeout_s=60, progress=seen.append, log=log) == {
        "ok": True,
        "echo": 42,
    }
    assert seen == ["halfway"]
    assert "vendor chatter on stdout" in log.read_text()  # vendor prints go to the log, not the reply


def test_worker_failure_keeps_its_message_and_hint(tiny):
    with pytest.raises(ToolchainError) as info:
        toolchains.call(tiny[0], "refuse", {}, timeout_s=60)
    assert info.value.message == "tiny: model too big" and info.value.hint == "use a smaller one"


def test_crashing_worker_names_toolchain_signal_and_log(tiny, tmp_path):
    log = tmp_path / "crash.log"
    with pytest.raises(ToolchainError) as info:
        toolchains.call(tiny[0], "crash", {}, timeout_s=60, log=log)
    assert "tiny toolchain worker crash died from signal 6" in info.value.message
    assert str(log) in info.value.hint and "about to die" in log.read_text()


def test_bad_reply_is_an_error(tiny):
    with pytest.raises(ToolchainError, match="exited 0 without a valid reply|gave no reply|without a valid reply"):
        toolchains.call(tiny[0], "garbage", {}, timeout_s=60)


def test_timeout_kills_the_process_group(tiny):
    started = time.monotonic()
    with pytest.raises(ToolchainError, match="did not finish within 2 s"):
        toolchains.call(tiny[0], "hang", {}, timeout_s=2)
    assert time.monotonic() - started < 30  # the grandchild holding the pipes was killed too
