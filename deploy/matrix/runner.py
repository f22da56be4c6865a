"""Run a release's cells as Ray tasks: embedded Ray by default, an existing cluster with --ray-address.

cells -> keys -> cached (key unchanged, bundle verifies) | Ray task run_cell(request) per cell (num_cpus, memory,
max_retries for worker loss) -> [device cells: run_validate on a worker offering device:<kind>] -> records
A build error comes back as its cell's record; a worker that dies (every retry) makes its cell `crashed`; neither
stops the other cells. Per-task logs: OUT/release-logs/<cell>.log.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vdeploy.errors import VdeployError
from vdeploy.matrix.cellkey import cached_record, cell_key, save_record
from vdeploy.matrix.release import Cell, Release
from vdeploy.matrix.release import cells as release_cells
from vdeploy.matrix.task import ATTEMPT

LOGS = "release-logs"
VERDICTS = ("pass", "fail", "unverified")


class RayError(VdeployError):
    kind = "ray"


@dataclass
class CellRun:
    cell: Cell
    key: str
    log: Path
    state: str = "queued"  # queued | running | validating | cached | done
    record: dict = field(default_factory=dict)
    ref: object = None
    started: float | None = None
    running_since: float | None = None  # its first attempt's start (timeout_s counts from here, not from the queue)

    @property
    def attempts(self) -> int:
        """Tries so far, from the `attempt build` lines in this run's log (none before it was submitted)."""
        if self.started is None:
            return 0
        try:
            return sum(line.startswith(f"{ATTEMPT} build") for line in self.log.read_text().splitlines())
        except OSError:
            return 0


@dataclass
class ReleaseRun:
    release: Release
    out: Path
    runs: list[CellRun]
    wall_s: float = 0.0
    ray_info: dict = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """1 if any build errored or crashed (or its device validation errored), else 3 if any failed a gate."""
        statuses = {status_of(r.record) for r in self.runs}
        return 1 if statuses & {"error", "crashed"} else 3 if "fail" in statuses else 0


def status_of(record: dict) -> str:
    """A cell's final status: the device's validation verdict when it ran there, else the build's."""
    device = record.get("device_validation") or {}
    if device.get("status") in ("pass", "fail", "unverified", "error", "crashed") and record.get("status") not in (
        "error",
        "crashed",
    ):
        return device["status"]
    return record.get("status", "error")


def run_release(
    release: Release,
    base: Path,
    *,
    out: Path | None = None,
    ray_address: str | None = None,
    force: bool = False,
    display=None,
) -> ReleaseRun:
    started = time.perf_counter()
    all_cells = release_cells(release, base, out)
    out_root = out or (base / release.out)
    logs = out_root / LOGS
    runs = [CellRun(c, cell_key(c), logs / f"{c.cell_id}.log") for c in all_cells]
    for run in runs:
        record = None if force else cached_record(out_root, run.cell, run.key)
        if record is not None:
            run.state, run.record = "cached", {**record, "cached": True}
    result = ReleaseRun(release, out_root, runs)
    pending = [r for r in runs if r.state == "queued"]
    # an unchanged build whose device step has no verdict yet (no device then, or it failed): only that step again
    revalidate = [r for r in runs if r.state == "cached" and r.cell.device and not _device_verdict(r.record)]
    if not ray_address:  # the embedded Ray offers no device: no need to start it for these
        for run in revalidate:
            run.record["device_validation"] = _skipped(run.cell.device)
        revalidate = []
    display = display or (lambda _runs: None)
    display(runs)
    if pending or revalidate:
        with _Ray(ray_address) as ray_info:
            result.ray_info = ray_info
            python_path = [str((base / p).resolve()) for p in release.python_path]
            _execute(release, pending, revalidate, out_root, display, runs, python_path)
    for run in runs:
        _clean_tmp(run)
    result.wall_s = time.perf_counter() - started
    display(runs)
    return result


def _execute(release: Release, pending, revalidate, out_root: Path, display, runs, python_path) -> None:
    import ray

    from vdeploy.matrix.task import run_cell

    res = release.resources
    build_task = ray.remote(run_cell)
    waiting: dict = {}
    for run in pending:
        run.log.parent.mkdir(parents=True, exist_ok=True)
        run.log.write_text(
            f"cell {run.cell.model} × {run.cell.target} ({run.cell.precision or 'default'}) key {run.key}\n"
        )
        run.ref = build_task.options(
            name=f"build:{run.cell.cell_id}",
            num_cpus=res.num_cpus,
            memory=int(res.memory_gb * 2**30),
            max_retries=release.retries,
            retry_exceptions=False,
        ).remote(with_tuning_seed(run.cell), str(run.log), python_path, run.cell.fit)
        run.started = time.perf_counter()
        waiting[run.ref] = (run, "build")
    offered = ray.cluster_resources()
    for run in revalidate:
        run.started = time.perf_counter()
        if not _validate(run, release, offered, waiting):
            _finish(run, out_root)
    while waiting:
        ready, _ = ray.wait(list(waiting), num_returns=1, timeout=0.5)
        for ref in ready:
            run, step = waiting.pop(ref)
            try:
                outcome = ray.get(ref)
            except ray.exceptions.RayError as exc:  # the worker died on every try, or its node was lost
                outcome = {"status": "crashed", "error": _crash_line(exc, run, step)}
            if step == "build":
                run.record = {**outcome, "attempts": run.attempts}
                _check_visible(run.record)
                if run.cell.device and run.record["status"] in VERDICTS and _validate(run, release, offered, waiting):
                    continue
            else:
                run.record["device_validation"] = outcome
            _finish(run, out_root)
        for run in pending:
            if run.state == "queued" and run.attempts:
                run.state, run.running_since = "running", time.perf_counter()
        _stop_overdue(release, waiting, out_root)
        display(runs)


def _stop_overdue(release: Release, waiting: dict, out_root: Path) -> None:
    """A build running past the release's timeout_s is cancelled (Ray kills its worker); its cell is an error."""
    import ray

    if release.timeout_s is None:
        return
    now = time.perf_counter()
    for ref, (run, step) in list(waiting.items()):
        if step != "build" or run.running_since is None or now - run.running_since <= release.timeout_s:
            continue
        ray.cancel(ref, force=True)
        del waiting[ref]
        error = f"the build ran past timeout_s {release.timeout_s:g} s and was stopped (raise timeout_s; see {run.log})"
        run.record = {"status": "error", "error": error, "attempts": run.attempts}
        _finish(run, out_root)


def _validate(run: CellRun, release: Release, offered: dict, waiting: dict) -> bool:
    """Submit the cell's device step (`vdeploy validate` on a node offering device:<kind>); False (and the record
    says skipped) when no node offers it."""
    import ray

    from vdeploy.matrix.task import run_validate

    resource = f"device:{run.cell.device}"
    if offered.get(resource, 0) < 1:
        run.record["device_validation"] = _skipped(run.cell.device)
        return False
    res, request = release.resources, run.cell.request
    validate = ray.remote(run_validate).options(
        num_cpus=res.num_cpus,
        memory=int(res.memory_gb * 2**30),
        resources={resource: 1},
        max_retries=release.retries,
        name=f"validate:{run.cell.cell_id}",
    )
    ref = validate.remote(run.record["bundle"], str(run.log), request.iters, request.warmup)
    waiting[ref] = (run, "validate")
    run.state = "validating"
    return True


def _skipped(device: str) -> dict:
    return {"status": "skipped", "reason": f"no Ray node offers resource device:{device}"}


def _device_verdict(record: dict) -> bool:
    return (record.get("device_validation") or {}).get("status") in VERDICTS


def _finish(run: CellRun, out_root: Path) -> None:
    run.state = "done"
    run.record["seconds_total"] = round(time.perf_counter() - run.started, 2)
    if run.record.get("status") in VERDICTS:  # a build that made a bundle; its device step may run again
        save_record(out_root, run.cell, run.key, run.record)


def _check_visible(record: dict) -> None:
    """A bundle written on another node must be on this machine too: `out:` has to be storage every node shares."""
    bundle = record.get("bundle")
    if bundle and not (Path(bundle) / "manifest.json").is_file():
        record["status"] = "error"
        record["error"] = (
            f"the bundle was written on node {record.get('node')} (host {record.get('host')}) at {bundle}, which "
            "this machine does not see: put the models, data and out: on storage every Ray node shares (NFS)"
        )


def _crash_line(exc, run: CellRun, step: str) -> str:
    text = " ".join(str(exc).split())
    tries = max(run.attempts, 1) if step == "build" else "every"
    return (
        f"the {step} task's worker process died ({type(exc).__name__}) on {tries} attempt(s): "
        f"{text[:240]} — see {run.log}"
    )


def _clean_tmp(run: CellRun) -> None:
    """A worker killed mid-build leaves its bundle's temporary directory; the retry wrote its own."""
    if run.state not in ("done", "cached"):
        return
    bundle = run.cell.bundle
    for tmp in bundle.parent.glob(f".{bundle.name}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def with_tuning_seed(cell: Cell):
    """The cell's request, its last bundle's TVM tuning records added as a seed: a rebuild on any node starts from
    them (each machine's own cache holds only what was tuned there). Not part of the cell key."""
    from dataclasses import replace

    from vdeploy.targets import load_catalog

    request = cell.request
    if load_catalog(request.catalog).get(cell.target).backend != "tvm" or not (cell.bundle / "tuning").is_dir():
        return request
    return replace(request, tuning_db=(*request.tuning_db, cell.bundle))


class _Ray:
    """ray.init for the run: embedded (this machine's cores and memory, 127.0.0.1, no dashboard) or a cluster."""

    def __init__(self, address: str | None):
        self.address = address
        self.temp: str | None = None

    def __enter__(self) -> dict:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report: nothing leaves the machine
        if not self.address:
            # a one-node Ray: Ray binds 127.0.0.1 only when it is told the node is no cluster (read at import)
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        try:
            import ray
        except ImportError:
            raise RayError("ray is not installed", "pip install 'vdeploy[ray]' (ray==2.60.0)") from None
        kwargs: dict[str, Any] = dict(log_to_driver=False, include_dashboard=False, configure_logging=False)
        if self.address:
            if self.address.startswith("ray://"):
                try:
                    import grpc  # noqa: F401  (Ray Client needs it)
                except ImportError:
                    raise RayError(
                        f"--ray-address {self.address} needs the Ray Client",
                        "pip install 'ray[client]==2.60.0', or use the cluster's GCS address",
                    ) from None
                kwargs.pop("include_dashboard")
            _check_reachable(self.address)
            try:
                ray.init(address=self.address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise RayError(
                    f"cannot connect to the Ray cluster at {self.address}: {' '.join(str(exc).split())[:200]}",
                    "start it with `ray start --head`, or omit --ray-address for an embedded one",
                ) from None
        else:
            self.temp = tempfile.mkdtemp(prefix="vdray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
            # Ray's default token auth stays on; its notice about it is not news for a run-scoped, loopback Ray
            logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
            ray.init(num_cpus=os.cpu_count(), _node_ip_address="127.0.0.1", _temp_dir=self.temp, **kwargs)
        return {
            "address": self.address or "embedded",
            "nodes": [_node(n) for n in ray.nodes() if n.get("Alive")],
            "cpus": ray.cluster_resources().get("CPU"),
            "ray": ray.__version__,
        }

    def __exit__(self, *exc) -> None:
        import ray

        ray.shutdown()
        if self.temp:
            shutil.rmtree(self.temp, ignore_errors=True)


def _check_reachable(address: str) -> None:
    """A HOST:PORT (or ray://HOST:PORT) nobody listens on fails now: ray.init would retry it for minutes."""
    import socket

    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RayError(f"--ray-address {address} is not auto, HOST:PORT or ray://HOST:PORT", "e.g. 10.0.0.5:6379")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise RayError(
            f"no Ray cluster answers at {address} ({exc.strerror or exc})",
            "start it with `ray start --head`, or omit --ray-address for an embedded one",
        ) from None


def _node(info: dict) -> dict:
    """A Ray node as release.json lists it: id, address, CPUs, memory and its custom resources (device:<kind>)."""
    resources = info.get("Resources") or {}
    builtin = ("CPU", "GPU", "memory", "object_store_memory")
    return {
        "id": info.get("NodeID"),
        "address": info.get("NodeManagerAddress"),
        "cpus": resources.get("CPU"),
        "memory_gb": round(resources.get("memory", 0) / 2**30, 1),
        "resources": {k: v for k, v in resources.items() if k not in builtin and not k.startswith("node:")},
    }
