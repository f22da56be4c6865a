"""What a Ray worker runs for one cell: the public build (pipeline.build with the cell's BuildRequest), logged.

run_cell(request, log, python_path) -> record {status, verdict, bundle, files, latency, ...} | {status: error, ...}
Everything the build prints (its progress, the runtimes' own output, child processes) goes to the cell's log file;
each attempt starts with an `attempt pid=… node=…` line, so a retried task shows one line per try.
run_validate(bundle, log): `vdeploy validate` on the worker that holds the device (a custom Ray resource).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from pathlib import Path

ATTEMPT = "attempt"


@contextlib.contextmanager
def _logged(log: Path, what: str):
    """Redirect this process's stdout/stderr (file descriptors, so child processes too) into `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", buffering=1) as fh:
        fh.write(
            f"{ATTEMPT} {what} pid={os.getpid()} node={_node_id()} host={socket.gethostname()} "
            f"at={time.strftime('%Y-%m-%dT%H:%M:%S')}\n"
        )
        fh.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        try:
            yield fh
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def run_cell(request, log: str, python_path: list[str], fit: dict | None = None) -> dict:
    """Build one cell (`fit`: a --fit search with those settings); a VdeployError (or any exception) becomes an error
    record, never a failed task."""
    from vdeploy.errors import VdeployError
    from vdeploy.fit.output import fit_build
    from vdeploy.pipeline import build

    for folder in reversed(python_path):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    started = time.perf_counter()
    base = {"pid": os.getpid(), "node": _node_id(), "host": socket.gethostname()}
    with _logged(Path(log), "build") as fh:

        def progress(message: str) -> None:
            fh.write(f"vdeploy: {message}\n")

        try:
            _check_inputs(request)
            if fit:
                result = fit_build(request, progress, budget_s=fit["budget_s"], levers=fit["levers"])
            else:
                result = build(request, progress)[0].result
        except VdeployError as exc:
            fh.write(f"error: {exc.one_line()}\n")
            return {**base, "status": "error", "error": exc.one_line(), "seconds": time.perf_counter() - started}
        except Exception as exc:  # an unexpected failure inside the build: reported in the cell
            line = f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            import traceback

            traceback.print_exc()
            return {**base, "status": "error", "error": line, "seconds": time.perf_counter() - started}
        fh.write(f"verdict: {result.verdict} bundle: {result.bundle}\n")
    return {
        **base,
        **summary_of(result.manifest, result.bundle),
        "timings": result.timings,
        "seconds": time.perf_counter() - started,
    }


def run_validate(bundle: str, log: str, iters: int = 50, warmup: int = 10) -> dict:
    """`vdeploy validate BUNDLE` on this worker (the one offering the device resource)."""
    from vdeploy.errors import VdeployError
    from vdeploy.validate.rerun import validate_bundle

    started = time.perf_counter()
    base = {"pid": os.getpid(), "node": _node_id(), "host": socket.gethostname()}
    with _logged(Path(log), "validate") as fh:
        try:
            report = validate_bundle(Path(bundle), iters=iters, warmup=warmup)
        except VdeployError as exc:
            fh.write(f"validate error: {exc.one_line()}\n")
            return {**base, "status": "error", "error": exc.one_line(), "seconds": time.perf_counter() - started}
        fh.write(f"validate verdict: {report['verdict']}\n")
    latency = report.get("latency_ms") or {}
    return {
        **base,
        "status": report["verdict"],
        "verdict": report["verdict"],
        "latency_p50_ms": latency.get("p50"),
        "violations": [v.get("message") for v in report["violations"]],
        "seconds": time.perf_counter() - started,
    }


def _check_inputs(request) -> None:
    """The release's files must be on this node too (a cluster without shared storage fails here, per cell)."""
    from vdeploy.errors import ModelLoadError

    for path in (request.model, request.calib, request.eval_data):
        if path is not None and not str(path).startswith("timm:") and not Path(path).exists():
            raise ModelLoadError(
                f"{path} is not on node {_node_id()} (host {socket.gethostname()})",
                "put the release's models, data and out: on storage every Ray node shares (NFS)",
            )


def summary_of(manifest: dict, bundle: Path) -> dict:
    """The cell's record from a bundle manifest: verdict, files, figures (no numbers made up here)."""
    from vdeploy.manifest import measured

    latency = measured(manifest, "latency_ms") or {}
    power = measured(manifest, "power_w") or {}
    energy = None
    if power.get("energy_mj") is not None:
        energy = {"mj": power["energy_mj"], "source": power.get("source")}
    elif latency.get("p50") is not None and power.get("mean") is not None:
        energy = {"mj": round(latency["p50"] * power["mean"], 3), "source": f"p50 × power ({power.get('source')})"}
    numerics = manifest.get("numerics") or {}
    return {
        "status": manifest["verdict"],
        "verdict": manifest["verdict"],
        "bundle": str(bundle),
        "report": str(Path(bundle) / "report.html"),
        "precision": manifest["precision"],
        "files": {f["path"]: f["sha256"] for f in manifest["files"]},
        "latency_p50_ms": latency.get("p50"),
        "latency_source": latency.get("source", "measured"),  # an estimate says so: never shown as measured
        "power_w": power.get("mean"),
        "power_source": power.get("source"),
        "energy": energy,
        "cosine": numerics.get("cosine"),
        "size_mb": manifest.get("size_mb"),
        "violations": [v.get("message") for v in manifest.get("violations", [])],
        "reason": manifest.get("reason", {}),
    }


def _node_id() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # outside Ray (a direct call): no node id
        pass
    return "local"
