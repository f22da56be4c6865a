"""Vendor toolchains in their own pinned venvs, driven through worker processes that speak JSON.

TOOLCHAINS[name] --install()--> $VDEPLOY_CACHE/toolchains/<name>-<hash of pins+script>/ (venv + vdeploy-toolchain.json)
request dict --call()--> VENV/bin/python toolchain_workers/<worker>.py (JSON on stdin) --> reply dict (last stdout line)

Vendor packages (rknn-toolkit2, Vela, ...) pin numpy/onnx/protobuf versions that conflict with ours, so each lives
in a venv of its own built by a repo script; nothing of it is imported into vdeploy's process. Workers import only
the standard library and the vendor packages (the vendor venv has no vdeploy).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vdeploy.errors import BackendError

Progress = Callable[[str], None]
REPO_SCRIPTS = Path(__file__).resolve().parents[1] / "scripts" / "toolchains"
WORKERS = Path(__file__).resolve().parent / "toolchain_workers"
RECORD = "vdeploy-toolchain.json"  # written last by install(): its presence means the venv is complete
PROGRESS_PREFIX = "progress:"


class ToolchainMissingError(BackendError):
    kind = "toolchain"


class ToolchainError(BackendError):
    kind = "toolchain"


@dataclass(frozen=True)
class Toolchain:
    """One vendor toolchain: the script that builds its venv and the exact pins it installs."""

    name: str
    requirements: tuple[str, ...]  # pinned distributions installed with their dependencies
    no_deps: tuple[str, ...] = ()  # pinned distributions installed --no-deps (their declared pins conflict)
    probe: tuple[str, ...] = ()  # distributions whose versions the manifest records (the vendor's own first)
    script: Path | None = None  # default: scripts/toolchains/<name>.sh in the repository
    workers: Path = field(default=WORKERS)  # folder holding <worker>.py

    @property
    def install_script(self) -> Path:
        return self.script or REPO_SCRIPTS / f"{self.name}.sh"

    def pins_hash(self) -> str:
        """Short hash of what the venv holds: the pins and the script that installs them."""
        digest = hashlib.sha256("\n".join((self.name, *self.requirements, "--no-deps", *self.no_deps)).encode())
        if self.install_script.is_file():
            digest.update(self.install_script.read_bytes())
        return digest.hexdigest()[:10]


# rknn-toolkit2 2.5.0 declares torch<=2.4 (a 5.6 GB CUDA build from PyPI) but imports torch at module level even to
# compile ONNX: its wheel goes in --no-deps beside our torch==2.13.0 CPU wheel and its other dependencies pinned to
# versions seen to work together (ENVIRONMENT.md). setuptools<81 keeps pkg_resources, which rknn imports; it is pinned
# in the same resolve as torch, which would otherwise pull a newer setuptools.
TOOLCHAINS: dict[str, Toolchain] = {
    "rknn": Toolchain(
        name="rknn",
        no_deps=("rknn-toolkit2==2.5.0",),
        requirements=(
            "torch==2.13.0",
            "numpy==1.26.4",
            "onnx==1.18.0",
            "onnxruntime==1.26.0",
            "protobuf==4.25.4",
            "psutil==7.2.2",
            "ruamel.yaml==0.19.1",
            "scipy==1.17.1",
            "tqdm==4.70.1",
            "opencv-python==4.11.0.86",
            "fast-histogram==0.14",
            "setuptools==80.9.0",
        ),
        probe=("rknn-toolkit2", "onnx", "onnxruntime", "numpy"),
    ),
    # Arm: Vela (Ethos-U), litert-torch + ai-edge-quantizer + LiteRT (PyTorch -> INT8 TFLite, host interpreter),
    # ExecuTorch (XNNPACK .pte, x86 runtime; its Arm backend needs tosa-tools). One venv: these pins resolve together
    # (numpy 2.1, protobuf 7); torch==2.13.0 is the local CPU wheel. 2.6 GB, ~9 min from PyPI here (2026-12-02).
    "arm": Toolchain(
        name="arm",
        requirements=(
            "torch==2.13.0",
            "ethos-u-vela==5.2.0",
            "litert-torch==0.10.0",
            "ai-edge-quantizer==0.10.0",
            "ai-edge-litert==2.3.0",
            "executorch==1.5.1",
            "tosa-tools==2026.8.0",
        ),
        probe=("ethos-u-vela", "litert-torch", "ai-edge-quantizer", "ai-edge-litert", "executorch", "torch"),
    ),
}


def toolchain(name: str | Toolchain) -> Toolchain:
    if isinstance(name, Toolchain):
        return name
    entry = TOOLCHAINS.get(name)
    if entry is None:
        raise ToolchainMissingError(f"unknown toolchain {name!r}", f"known toolchains: {', '.join(TOOLCHAINS)}")
    return entry


def cache_dir() -> Path:
    return Path(os.environ.get("VDEPLOY_CACHE") or Path.home() / ".cache" / "vdeploy")


def log_dir() -> Path:
    """Where worker logs go: they outlive the build (the temp dir is the build's own scratch, removed after it)."""
    path = cache_dir() / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def venv_dir(name: str | Toolchain) -> Path:
    entry = toolchain(name)
    return cache_dir() / "toolchains" / f"{entry.name}-{entry.pins_hash()}"


def installed(name: str | Toolchain) -> bool:
    venv = venv_dir(name)
    return (venv / RECORD).is_file() and (venv / "bin" / "python").exists()


def require(name: str | Toolchain) -> Path:
    """The toolchain's venv; ToolchainMissingError naming the install command when it is not there."""
    entry = toolchain(name)
    if not installed(entry):
        raise ToolchainMissingError(
            f"the {entry.name} toolchain is not installed (looked in {venv_dir(entry)})",
            f"run `vdeploy toolchain install {entry.name}`",
        )
    return venv_dir(entry)


def install(name: str | Toolchain, progress: Progress = lambda _: None) -> Path:
    """Build the venv with the repo script in a temporary folder, record its packages, rename it into place.

    Idempotent: an installed toolchain returns at once. A failed or interrupted install leaves no venv behind.
    """
    entry = toolchain(name)
    final = venv_dir(entry)
    if installed(entry):
        return final
    if not entry.install_script.is_file():
        raise ToolchainError(
            f"install script {entry.install_script} is missing",
            "install vdeploy from its repository checkout (pip install -e .)",
        )
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    log_path = final.parent / f"{final.name}.install.log"
    pins = tmp / "vdeploy-requirements.txt"
    pins.write_text("\n".join(entry.requirements) + "\n")
    nodeps = tmp / "vdeploy-no-deps.txt"
    nodeps.write_text("\n".join(entry.no_deps) + "\n")
    env = {
        **os.environ,
        "PYTHON": getattr(sys, "_base_executable", sys.executable),
        "VDEPLOY_REQUIREMENTS": str(pins),
        "VDEPLOY_NO_DEPS": str(nodeps),
    }
    started = time.monotonic()
    progress(f"installing the {entry.name} toolchain into {final} (log: {log_path})")
    try:
        with open(log_path, "w") as log:
            code = _stream(["bash", str(entry.install_script), str(tmp)], None, env, log, progress, timeout_s=None)[0]
        if code != 0:
            raise ToolchainError(f"installing the {entry.name} toolchain failed (exit {code})", f"see {log_path}")
        packages = _distributions(tmp / "bin" / "python")
        record = {
            "name": entry.name,
            "pins": list(entry.requirements),
            "no_deps": list(entry.no_deps),
            "packages": packages,
            "install_s": round(time.monotonic() - started, 1),
            "size_mb": round(_size(tmp) / 1e6, 1),
            "python": _python_version(tmp / "bin" / "python"),
        }
        (tmp / RECORD).write_text(json.dumps(record, indent=1, sort_keys=True))
        try:
            tmp.rename(final)
        except OSError:  # another process finished first (or a stale incomplete folder is in the way)
            if not installed(entry):
                shutil.rmtree(final, ignore_errors=True)
                tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    progress(f"{entry.name} toolchain ready ({record['size_mb']:.0f} MB, {record['install_s']:.0f} s)")
    return final


def record(name: str | Toolchain) -> dict:
    return json.loads((require(name) / RECORD).read_text())


def versions(name: str | Toolchain) -> dict[str, str]:
    """{distribution: version} of the probed packages (for the manifest's toolchain record), {} if not installed."""
    entry = toolchain(name)
    if not installed(entry):
        return {}
    packages = {k.lower(): v for k, v in record(entry)["packages"].items()}
    return {p: packages[p.lower()] for p in entry.probe if p.lower() in packages}


def call(
    name: str | Toolchain,
    worker: str,
    request: dict,
    *,
    timeout_s: float,
    progress: Progress = lambda _: None,
    log: Path | None = None,
) -> dict:
    """Run a worker in the toolchain's venv: the request as JSON on stdin, the reply from its last stdout line.

    The worker's stderr (and any stdout before the reply) goes to `log`; its "progress: ..." lines go to progress.
    It runs in a scratch folder (rknn-toolkit2 writes check*.onnx into its working folder), so paths in `request`
    must be absolute. A crash, a timeout or a reply that is not {"ok": true, ...} raises ToolchainError naming the log.
    """
    entry = toolchain(name)
    venv = require(entry)
    script = entry.workers / f"{worker}.py"
    if log is None:
        log = log_dir() / f"{entry.name}-{worker}-{os.getpid()}-{time.time_ns()}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    with open(log, "w") as log_file, tempfile.TemporaryDirectory(prefix=f"vdeploy-{entry.name}-") as scratch:
        code, last = _stream(
            [str(venv / "bin" / "python"), str(script)],
            json.dumps(request),
            env,
            log_file,
            progress,
            timeout_s=timeout_s,
            cwd=scratch,
        )
    where = f"{entry.name} toolchain worker {worker}"
    if code is None:
        raise ToolchainError(f"{where} did not finish within {timeout_s:g} s (killed)", f"see its log {log}")
    try:
        reply = json.loads(last) if last else None
    except json.JSONDecodeError:
        reply = None
    if not isinstance(reply, dict) or "ok" not in reply:
        how = f"died from signal {-code}" if code < 0 else f"exited {code}" if code else "gave no reply"
        raise ToolchainError(f"{where} {how} without a valid reply", f"see its log {log}")
    if not reply["ok"]:
        raise ToolchainError(
            f"{entry.name}: {reply.get('message') or 'the worker reported a failure'}",
            reply.get("hint") or f"see the log {log}",
        )
    return reply


def _stream(argv, stdin_text, env, log_file, progress: Progress, *, timeout_s, cwd=None) -> tuple[int | None, str]:
    """Run argv in its own process group; stderr and stdout lines to log_file, progress lines forwarded.

    Returns (exit code or None on timeout, the last non-empty stdout line). Interrupts kill the whole group.
    """
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
        bufsize=1,
        start_new_session=True,
        cwd=cwd,
    )
    last = [""]
    lock = threading.Lock()

    def pump(stream, is_stdout):
        for line in stream:
            with lock:
                log_file.write(line)
                log_file.flush()
            text = line.strip()
            if text.startswith(PROGRESS_PREFIX):
                progress(text[len(PROGRESS_PREFIX) :].strip())
            elif is_stdout and text:
                last[0] = text

    threads = [
        threading.Thread(target=pump, args=(proc.stdout, True), daemon=True),
        threading.Thread(target=pump, args=(proc.stderr, False), daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        if stdin_text is not None:
            try:
                proc.stdin.write(stdin_text)
            except BrokenPipeError:
                pass
        proc.stdin.close()
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        code = None
    except BaseException:
        _kill_group(proc)
        raise
    for thread in threads:
        thread.join(timeout=5)
    return code, last[0]


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _distributions(python: Path) -> dict[str, str]:
    """{name: version} of every distribution in a venv (what pip freeze lists; works without pip)."""
    code = (
        "import importlib.metadata as m, json; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _python_version(python: Path) -> str:
    return subprocess.run(
        [str(python), "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def listing() -> list[dict]:
    """One row per known toolchain: name, installed, venv path, recorded versions."""
    return [
        {"name": n, "installed": installed(n), "venv": str(venv_dir(n)), "versions": versions(n)} for n in TOOLCHAINS
    ]
