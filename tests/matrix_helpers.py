"""Helpers for the release-matrix tests: golden models on disk, release files, `vdeploy matrix` in a subprocess,
a local Ray cluster on 127.0.0.1 that is always stopped (only the processes under its own temp dir)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

VENV_BIN = Path(sys.executable).parent
MODELS = ("cnn", "vit", "mobilevit")
TARGETS = ("onnxruntime-cpu", "x86-cpu", "hailo-8")  # the cheap ones: ORT, OpenVINO, an NPU hand-off (no timing)
FAST = {"iters": 10, "warmup": 2}


def ray_env() -> dict:
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def write_release(folder: Path, models: dict, targets, name="test", out="bundles", **extra) -> Path:
    """models: label -> entry dict (path relative to `folder`); returns the release file's path."""
    data = {
        "name": name,
        "out": out,
        "options": FAST,
        "targets": list(targets),
        "models": list(models.values()),
        **extra,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_matrix(release: Path, *args: str, timeout: int = 400) -> tuple[int, dict, str, float]:
    """(exit code, release.json from --json stdout, stderr, wall seconds) of `vdeploy matrix RELEASE ARGS --json`."""
    started = time.perf_counter()
    proc = subprocess.run(
        [str(VENV_BIN / "vdeploy"), "matrix", str(release), *args, "--json"],
        env=ray_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    wall = time.perf_counter() - started
    assert proc.stdout.strip(), proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout), proc.stderr, wall


def by_cell(data: dict) -> dict:
    return {(c["model"], c["target"]): c for c in data["cells"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """`ray start --head` + one more worker node (with a custom device resource), both on 127.0.0.1."""

    def __init__(self, device: str):
        self.temp = tempfile.mkdtemp(prefix="vrt", dir="/tmp")  # short: Ray's socket paths are length-limited
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.device = device

    def start(self) -> LocalCluster:
        common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", f"--temp-dir={self.temp}", "--disable-usage-stats"]
        for args in (
            ["--head", f"--port={self.port}", "--include-dashboard=false"],
            [f"--address={self.address}", f"--resources={json.dumps({'device:' + self.device: 1})}"],
        ):
            proc = subprocess.run(
                [str(VENV_BIN / "ray"), "start", *args, *common],
                env=ray_env(),
                capture_output=True,
                text=True,
                timeout=180,
            )
            if proc.returncode != 0:
                self.stop()
                raise RuntimeError(f"ray start failed: {proc.stderr[-2000:]}")
        return self

    def processes(self):
        import psutil

        me = os.getpid()
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            if proc.pid != me and self.temp in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        return found

    def stop(self) -> None:
        """Kill the cluster's processes (each names this cluster's temp dir), their children first."""
        import psutil

        procs = self.processes()
        for proc in list(procs):
            try:
                procs += proc.children(recursive=True)
            except psutil.Error:
                pass
        for proc in procs:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=10)


def single_build_hashes(model_paths: dict, targets, out: Path) -> dict:
    """(label, target) -> (verdict, {file: sha256}) of plain single builds through the public API."""
    import vdeploy

    result = {}
    for label, path in model_paths.items():
        for built in vdeploy.build(str(path), list(targets), out=out, **FAST):
            result[(label, built.target)] = (built.verdict, {f["path"]: f["sha256"] for f in built.manifest["files"]})
    return result
