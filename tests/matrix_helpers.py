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
TARGETS = ("onnxruntime-cpu", "x86-cpu", "jetson")  # ORT, OpenVINO, a deferred TensorRT build (ORT numerics)
FAST = {"iters": 10, "warmup": 2}


def ray_env(**extra: str) -> dict:
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", **extra}


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


def matrix_command(release: Path, *args: str) -> list[str]:
    return [str(VENV_BIN / "vdeploy"), "matrix", str(release), *args, "--json"]


def run_matrix(release: Path, *args: str, timeout: int = 400, env=None) -> tuple[int, dict, str, float]:
    """(exit code, release.json from --json stdout, stderr, wall seconds) of `vdeploy matrix RELEASE ARGS --json`."""
    started = time.perf_counter()
    command = matrix_command(release, *args)
    proc = subprocess.run(command, env=env or ray_env(), capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - started
    assert proc.stdout.strip(), proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout), proc.stderr, wall


def by_cell(data: dict) -> dict:
    return {(c["model"], c["target"]): c for c in data["cells"]}


def attempt_pids(log: Path, what: str = "build") -> list[int]:
    """The worker pid of each attempt line the task wrote into its log."""
    return [
        int(line.split("pid=")[1].split()[0])
        for line in log.read_text().splitlines()
        if line.startswith(f"attempt {what} ")
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, seconds: float, what: str):
    """check() until it returns something truthy; AssertionError after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")


class LocalCluster:
    """`ray start --head` + one worker node offering resource device:<kind>, both bound to 127.0.0.1 only.

    Ray turns the address 127.0.0.1 into the machine's own address (and then listens on every interface) unless
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which refuses to add a second node; so the head starts with that variable
    (loopback only) and the worker node's `ray start` keeps 127.0.0.1 as given (WORKER_START). Drivers of this
    cluster run with `env`. Stopped by killing the processes under its own temp dir: `ray stop` would stop every
    Ray on the machine."""

    WORKER_START = (
        "import sys; import ray._private.services as s; s.resolve_ip_for_localhost = lambda host: host; "
        "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())"
    )

    def __init__(self, device: str):
        self.temp = tempfile.mkdtemp(prefix="vrt", dir="/tmp")  # short: Ray's socket paths are length-limited
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.device = device
        self.env = ray_env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
        self.head_id = self.worker_id = ""
        self.nodes: list[dict] = []

    def start(self) -> LocalCluster:
        common = ["start", "--node-ip-address=127.0.0.1", "--num-cpus=1", f"--temp-dir={self.temp}"]
        common += ["--disable-usage-stats", f"--dashboard-agent-listen-port={free_port()}"]
        head = ["-m", "ray.scripts.scripts", *common, "--head", f"--port={self.port}", "--include-dashboard=false"]
        device = f"device:{self.device}"
        offer = json.dumps({device: 1})
        worker = ["-c", self.WORKER_START, *common, f"--address={self.address}", f"--resources={offer}"]
        for args, env in ((head, self.env), (worker, ray_env())):
            proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=120)
            if proc.returncode != 0:
                self.stop()
                raise RuntimeError(f"ray start failed: {proc.stderr[-2000:]}")
        self.nodes = wait_for(self._two_nodes, 60, "both Ray nodes alive")
        self.worker_id = next(n["NodeID"] for n in self.nodes if n["Resources"].get(device))
        self.head_id = next(n["NodeID"] for n in self.nodes if not n["Resources"].get(device))
        return self

    def _two_nodes(self) -> list[dict] | None:
        """ray.nodes() as a separate driver sees them (not vdeploy's own report), when both are alive."""
        code = (
            f"import json, ray; ray.init(address={self.address!r}, log_to_driver=False, configure_logging=False); "
            "print(json.dumps([n for n in ray.nodes() if n['Alive']]))"
        )
        proc = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=60)
        nodes = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else []
        return nodes if len(nodes) == 2 else None

    def processes(self):
        import psutil

        me = os.getpid()
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if proc.pid != me and self.temp in " ".join(proc.info["cmdline"] or []):
                    found.append(proc)
            except psutil.Error:
                pass
        return found

    def stop(self) -> None:
        """Kill the cluster's processes (each names this cluster's temp dir) and their children; bounded."""
        import shutil

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
        psutil.wait_procs(procs, timeout=15)
        shutil.rmtree(self.temp, ignore_errors=True)


def single_build_hashes(model_paths: dict, targets, out: Path) -> dict:
    """(label, target) -> (verdict, {file: sha256}) of plain single builds through the public API."""
    import vdeploy

    result = {}
    for label, path in model_paths.items():
        for built in vdeploy.build(str(path), list(targets), out=out, **FAST):
            result[(label, built.target)] = (built.verdict, {f["path"]: f["sha256"] for f in built.manifest["files"]})
    return result
