"""Apache TVM (relax) for CPUs: legal ONNX -> tuned LLVM code -> model.so + params.bin + run_tvm.py.

legal ONNX --from_onnx--> relax (weights as parameters) --tvm_tune--> MetaSchedule records (cache + bundle)
  --apply records, lift weight-layout transforms--> tvm.compile(device target) --export_library--> model.so
open(): this host's architecture -> relax VM in process; aarch64 on another host -> qemu-user (tvm_qemu)

model.so holds `main(inputs..., *params)` and, where tuning rewrote weight layouts, `main_transform_params`,
which every runner calls once on params.bin (raw weights) before the first inference.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from vdeploy.backends.base import Artifact, BackendBase, CompileJob, runtime_module
from vdeploy.errors import BackendError

LIB, PARAMS, RUNNER, TUNING = "model.so", "params.bin", "run_tvm.py", "tuning"
TRANSFORM = "main_transform_params"
ARCH = {"aarch64": "aarch64", "arm64": "aarch64", "x86_64": "x86_64", "amd64": "x86_64"}
UNTUNED = (
    "{count} of {tasks} kernels have no valid tuning record (--tune-trials {trials}): {names} run TVM's "
    "unscheduled default code, often 50-100x slower than tuned"
)


def host_arch() -> str:
    return ARCH.get(platform.machine().lower(), platform.machine().lower())


def target_arch(target: dict) -> str:
    triple = target.get("mtriple")
    return ARCH.get(triple.split("-")[0], triple.split("-")[0]) if triple else host_arch()


def resolve(target: dict) -> dict:
    """A TVM target dict with "host" values replaced by this machine's CPU name and core count."""
    from tvm.target import codegen

    resolved = dict(target)
    if resolved.get("mcpu") == "host":
        resolved["mcpu"] = codegen.llvm_get_system_cpu()
    if resolved.get("num-cores") == "host":
        resolved["num-cores"] = len(os.sched_getaffinity(0))
    return resolved


class TvmOptions(BaseModel):
    """How the TVM backend compiles (a target's `options:`). Targets are TVM's dict form (TVM 0.27 rejects
    "llvm -mtriple=..." strings); "host" as mcpu or num-cores means this machine's CPU name or core count."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: dict[str, Any]  # the device, e.g. {kind: llvm, mtriple: aarch64-linux-gnu, mcpu: cortex-a76}
    tune_on: dict[str, Any] | None = None  # where schedules are measured when the device is not this host
    tune_trials: int = Field(default=400, ge=0)  # MetaSchedule budget for tasks without a cached record
    tuning_db: tuple[str, ...] = ()  # bundles or tuning/ folders whose records seed the cache (--tuning-db)
    cross_cc: str | None = None  # the C compiler that links the .so for another architecture

    @model_validator(mode="after")
    def _llvm(self) -> TvmOptions:
        for target in (self.target, self.tune_on or {}):
            if target and target.get("kind") != "llvm":
                raise ValueError("only LLVM CPU targets (kind: llvm) are supported by the tvm backend")
        return self


class TvmBackend(BackendBase):
    name = "tvm"
    options_model = TvmOptions
    toolchain_packages = ("apache-tvm", "apache-tvm-ffi")
    run_options = {"arch": r"[A-Za-z0-9_]+", "inputs": r"\[.*\]", "num_threads": r"[1-9][0-9]{0,2}"}

    def available(self) -> bool:
        return runtime_module("tvm") is not None

    def version(self) -> str:
        return runtime_module("tvm").__version__

    def compile(self, job: CompileJob) -> Artifact:
        import tvm
        from tvm import relax

        from vdeploy.backends import tvm_tune
        from vdeploy.backends.tvm_qemu import write_params

        model, precision, out_dir, options, progress = job.model, job.precision, job.out_dir, job.options, job.progress
        device, tune_on = resolve(options.target), resolve(options.tune_on or options.target)
        trials = options.tune_trials
        seeds = tuple(_tuning_dir(Path(p)) for p in options.tuning_db)
        progress("importing the legal ONNX into TVM relax")
        mod, params, input_names = import_onnx(model)
        tune_target = tvm.target.Target(tune_on)
        with tune_target:
            mod = _prepare(mod)
        tasks, database, report = tvm_tune.tune(
            mod,
            tune_target,
            trials=trials,
            seeds=seeds,
            progress=progress,
            database_dir=tvm_tune.cache_dir(tune_target),
        )
        shipped = tvm_tune.export_records(database, tasks, out_dir / TUNING)
        progress(f"compiling for {device.get('mtriple', 'this host')} ({device.get('mcpu', 'generic')})")
        with tvm.target.Target(device), tvm.transform.PassContext(opt_level=3), database:
            mod = relax.transform.MetaScheduleApplyDatabase()(mod)
            mod = tvm.transform.Sequential(
                [
                    relax.transform.SplitLayoutRewritePreproc(),
                    relax.transform.LiftTransformParams(),
                    relax.transform.FoldConstant(),
                ]
            )(mod)
        executable = _build(mod, device)
        arch = target_arch(device)
        _export(executable, out_dir / LIB, options.cross_cc if arch != host_arch() else None)
        write_params(out_dir / PARAMS, params)
        shutil.copyfile(Path(__file__).with_name("tvm_files") / RUNNER, out_dir / RUNNER)
        details = {**report.to_dict(), "records_shipped": shipped, "target": device, "tuned_on": tune_on}
        if report.untuned:
            progress(
                "warning: "
                + UNTUNED.format(
                    count=report.untuned,
                    tasks=report.tasks,
                    trials=trials,
                    names=", ".join(report.untuned_kernels[:3]) + (" …" if report.untuned > 3 else ""),
                )
            )
        return Artifact(
            self.name,
            precision,
            LIB,
            (LIB, PARAMS),  # what the device loads: the size budget's files
            options=(
                ("arch", arch),
                ("inputs", json.dumps(input_names)),
                ("num_threads", str(device.get("num-cores", 1))),
            ),
            details=(("tuning", details),),
        )

    def host_latency_reason(self, artifact: Artifact) -> str | None:
        arch = artifact.option("arch")
        if arch == host_arch():
            return None
        return (
            f"the {arch} artifact runs under qemu-user emulation on this {host_arch()} host: its timings would "
            f"not represent the device (numerics are checked; run `vdeploy validate` on the board)"
        )

    def run_many(self, session, samples):
        from vdeploy.backends.tvm_qemu import QemuSession

        if isinstance(session, QemuSession):  # one qemu process for every sample
            return session.run_many(samples)
        return super().run_many(session, samples)

    def open(self, artifact: Artifact, bundle_dir: Path):
        inputs = json.loads(artifact.option("inputs"))
        threads = int(artifact.option("num_threads") or 1)
        if artifact.option("arch") == host_arch():
            return TvmSession(bundle_dir / LIB, bundle_dir / PARAMS, inputs, threads)
        from vdeploy.backends.tvm_qemu import QemuSession

        return QemuSession(bundle_dir / LIB, bundle_dir / PARAMS, inputs, threads)  # raises with the install hint


def import_onnx(model):
    """(relax IRModule with weights as parameters, weights in parameter order, graph input names)."""
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    try:
        mod = from_onnx(model, keep_params_in_input=True)
    except Exception as exc:  # the frontend raises bare errors (NotImplementedError, KeyError, TVMError)
        raise BackendError(
            f"TVM's ONNX frontend cannot import the legal graph: {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else ''}",
            "run `vdeploy coverage MODEL --target x86-cpu-tvm` and report the op",
        ) from None
    mod, params = relax.frontend.detach_params(mod)
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    return mod, [p.numpy() for p in params.get("main", [])], inputs


def _prepare(mod):
    """Inference-only ops, fused TIR kernels, weights marked layout-free (tuning may re-tile them)."""
    from tvm import relax

    mod = relax.transform.DecomposeOpsForInference()(mod)
    mod = relax.get_pipeline("zero")(mod)
    return relax.transform.AttachAttrLayoutFreeBuffers()(mod)


def _build(mod, device: dict):
    import tvm

    try:
        return tvm.compile(mod, target=tvm.target.Target(device))
    except Exception as exc:
        raise BackendError(
            f"TVM failed to compile for {device}: {str(exc).strip().splitlines()[-1][:200]}",
            "rerun with --tune-trials 0 to rule out a bad schedule; report the model",
        ) from None


def _export(executable, path: Path, cross_cc: str | None) -> None:
    if cross_cc and shutil.which(cross_cc) is None:
        raise BackendError(
            f"the cross compiler {cross_cc} is not installed",
            "run scripts/install_system_deps.sh (Debian: apt-get install gcc-aarch64-linux-gnu)",
        )
    try:
        executable.export_library(str(path), **({"cc": cross_cc} if cross_cc else {}))
    except Exception as exc:
        raise BackendError(
            f"linking {path.name} failed: {str(exc).strip().splitlines()[-1][:200]}",
            "check the C compiler named by tvm.cross_cc in targets.yaml",
        ) from None


def _tuning_dir(path: Path) -> Path:
    """--tuning-db accepts a bundle or a tuning directory."""
    candidate = path / TUNING if (path / TUNING).is_dir() else path
    if not (candidate / "database_tuning_record.json").is_file():
        raise BackendError(
            f"{path} holds no TVM tuning records (database_tuning_record.json)",
            "pass a TVM bundle directory or its tuning/ folder",
        )
    return candidate


class TvmSession:
    """The relax VM in this process, for an artifact built for this host's architecture."""

    def __init__(self, lib: Path, params: Path, input_names: list[str], threads: int):
        os.environ.setdefault("TVM_NUM_THREADS", str(threads))
        import tvm
        from tvm import relax

        self.input_names = input_names
        self._vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
        self._params = read_params(params)
        if self._vm.module.implements_function(TRANSFORM):
            self._params = list(self._vm[TRANSFORM](self._params))

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import tvm

        inputs = [tvm.runtime.tensor(np.asarray(feeds[n], order="C")) for n in self.input_names]  # keeps 0-d
        result = self._vm["main"](*inputs, *self._params)
        return [np.asarray(t.numpy()) for t in _flatten(result)]

    def sync(self) -> None:
        """The CPU VM returns when its outputs are written."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._vm = self._params = None


def read_params(path: Path) -> list:
    import tvm

    params = tvm.runtime.load_param_dict_from_file(str(path))
    return [params[k] for k in sorted(params, key=lambda k: int(k.lstrip("p")))]


def _flatten(value) -> list:
    if hasattr(value, "numpy"):
        return [value]
    return [t for item in value for t in _flatten(item)]
