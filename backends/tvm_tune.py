"""MetaSchedule tuning with a bounded trial budget and a tuning database that outlives the build.

relax IRModule -> tasks -> records already in the cache database? (reused) -> tune the rest within --tune-trials
  -> cache database (~/.cache/vdeploy/tvm-tuning/<target>) -> this model's best records -> bundle tuning/

Workers: MetaSchedule's LocalBuilder starts fresh worker processes for every batch, and each start imports
tvm (and torch through tvm-ffi): most of a small budget went to process starts. PooledBuilder keeps its
workers (recycled every `RECYCLE_AFTER` builds, the leak LocalBuilder restarts for) and still kills a build
that runs past its timeout.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

RECORDS = ("database_workload.json", "database_tuning_record.json")
BUILD_TIMEOUT_S = 20.0  # a kernel normally builds in 1-2 s; a pathological unrolling can take minutes
RUN_TIMEOUT_S = 60.0
RECYCLE_AFTER = 64
TRIALS_PER_ROUND = 8  # candidates a task gets per round (fewer when the budget is small)


@dataclass(frozen=True)
class TuningReport:
    tasks: int  # tunable tasks (fused TIR functions) in the model
    reused: int  # tasks whose schedule came from a database (cache or --tuning-db)
    tuned: int  # tasks tuned in this build
    trials: int  # measured candidates in this build
    budget: int  # --tune-trials
    seconds: float
    database: str  # the cache database this build read and extended
    untuned: int = 0  # tasks without a valid record: they run TVM's unscheduled default code
    untuned_kernels: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {**asdict(self), "seconds": round(self.seconds, 2), "untuned_kernels": list(self.untuned_kernels)}


def cache_dir(tune_target) -> Path:
    """One database per tuning target (and TVM version): records only transfer between identical targets."""
    import tvm

    root = Path(os.environ.get("VDEPLOY_CACHE") or Path.home() / ".cache" / "vdeploy") / "tvm-tuning"
    key = json.dumps({"target": str(tune_target), "tvm": tvm.__version__}, sort_keys=True)
    return root / hashlib.sha256(key.encode()).hexdigest()[:16]


def tune(
    mod,
    tune_target,
    *,
    trials: int,
    database_dir: Path,
    seeds: tuple[Path, ...] = (),
    progress: Callable[[str], None] = lambda _: None,
):
    """Tune the tasks of `mod` with no measured candidate in `database_dir`. -> (tasks, database, report)

    A task measured before whose every candidate failed keeps TVM's default schedule (reported as untuned):
    retrying it on each rebuild would cost MetaSchedule's start-up every time for the same outcome."""
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    started = time.monotonic()
    database_dir.mkdir(parents=True, exist_ok=True)
    database = open_database(database_dir)
    for seed in seeds:
        merge(open_database(seed), database)
    tasks = [t for t in ms.relax_integration.extract_tasks(mod, tune_target) if _tunable(t)]
    measured = _measured_workloads(database)
    missing = [t for t in tasks if tvm_ffi.structural_hash(t.dispatched[0]) not in measured]
    reused = sum(has_record(database, t) for t in tasks)  # before tuning: records from the cache or seeds
    tuned = trials_run = 0
    if missing and trials > 0:
        progress(f"tuning {len(missing)} of {len(tasks)} tasks with MetaSchedule ({trials} trials)")
        trials_run = _tune_tasks(missing, tune_target, database, trials)
        tuned = sum(has_record(database, t) for t in missing)
    untuned = tuple(t.task_name for t in tasks if not has_record(database, t))
    report = TuningReport(
        len(tasks),
        reused,
        tuned,
        trials_run,
        trials,
        time.monotonic() - started,
        str(database_dir),
        len(untuned),
        untuned,
    )
    return tasks, database, report


def _tune_tasks(tasks, tune_target, database, trials: int) -> int:
    from tvm.s_tir import meta_schedule as ms

    # No per-task cap: a task whose space runs out (a reshape has one candidate) leaves its share to the
    # heavy kernels, which the gradient scheduler picks by expected gain. Rounds shrink for small budgets so
    # that every task gets measured once.
    per_round = max(1, min(TRIALS_PER_ROUND, trials // len(tasks)))
    # MetaSchedule logs every round and a task table to a console handler bound to sys.stdout when the loggers
    # are configured: keep warnings only, and on stderr (stdout may be --json).
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    # Candidates are timed with the threads the artifact will use (TVM's own default here was 1 of 2 cores).
    os.environ["TVM_NUM_THREADS"] = str(tune_target.attrs.get("num-cores", 1))
    with tempfile.TemporaryDirectory(prefix="vdeploy-tune-") as work_dir, contextlib.redirect_stdout(sys.stderr):
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            tasks,
            work_dir,
            strategy=ms.search_strategy.EvolutionarySearch(
                population_size=128, init_min_unmeasured=32, genetic_num_iters=2
            ),
            seed=0,
        )
        builder = pooled_builder()
        runner = ms.runner.LocalRunner(
            timeout_sec=RUN_TIMEOUT_S,
            evaluator_config=ms.runner.EvaluatorConfig(
                number=3, repeat=1, min_repeat_ms=0, enable_cpu_cache_flush=False
            ),
        )
        before = len(database)
        ms.tune.tune_tasks(
            tasks=contexts,
            task_weights=weights,
            work_dir=work_dir,
            max_trials_global=trials,
            max_trials_per_task=trials,
            num_trials_per_iter=per_round,
            builder=builder,
            runner=runner,
            database=database,
            cost_model="xgb",
        )
        return len(database) - before


def pooled_builder():
    """A MetaSchedule builder whose worker processes live across batches (see the module docstring)."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import _worker_func
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    class PooledBuilder(PyBuilder):
        def __init__(self):
            self.pool = PopenPoolExecutor(
                max_workers=min(2, os.cpu_count() or 1),
                timeout=BUILD_TIMEOUT_S,
                maximum_process_uses=RECYCLE_AFTER,
                # untimed: the first build imports tvm.s_tir.tensor_intrin (20+ s
                # on a loaded host), which made every build of a fresh worker time out
                initializer=lambda: __import__("tvm.s_tir.tensor_intrin"),
            )

        def build(self, build_inputs):
            args = [(None, None, b.mod, b.target, None) for b in build_inputs]
            results = []
            for outcome in self.pool.map_with_error_catching(lambda x: _worker_func(*x), args):
                if outcome.status == StatusKind.COMPLETE:
                    results.append(BuilderResult(outcome.value, None))
                else:
                    results.append(BuilderResult(None, f"build {outcome.status.name.lower()}: {outcome.value}"))
            return results

    return derived_object(PooledBuilder)()


def _tunable(task) -> bool:
    return not task.mod.attrs.get("tirx.is_scheduled", False)


def open_database(directory: Path):
    from tvm.s_tir import meta_schedule as ms

    workload, record = (str(Path(directory) / name) for name in RECORDS)
    return ms.database.JSONDatabase(path_workload=workload, path_tuning_record=record, allow_missing=True)


def _measured_workloads(database) -> set[int]:
    """Structural hashes of the workloads with any measured candidate, failed ones included. (MetaSchedule commits
    every task's workload when tuning starts, so has_workload() also holds for tasks the budget never reached.)"""
    import tvm_ffi

    return {tvm_ffi.structural_hash(r.workload.mod) for r in database.get_all_tuning_records()}


def has_record(database, task) -> bool:
    return database.query_tuning_record(task.dispatched[0], task.target, task.task_name) is not None


def merge(source, destination) -> None:
    """Copy into `destination` the records of workloads it has never measured (a seed merged on every build
    must not append its records to the cache again each time)."""
    import tvm_ffi

    known = _measured_workloads(destination)
    for record in source.get_all_tuning_records():
        if tvm_ffi.structural_hash(record.workload.mod) not in known:
            _commit(destination, record.workload.mod, record)


def _commit(database, mod, record) -> None:
    """`record` (of another database) committed to `database` under the workload of `mod`."""
    workload = database.commit_workload(mod)
    database.commit_tuning_record(
        type(record)(record.trace, workload, record.run_secs, record.target, record.args_info)
    )


def export_records(database, tasks, out_dir: Path) -> int:
    """The best record of each task into a fresh database in out_dir (what the bundle ships). -> records written"""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in RECORDS:
        (out_dir / name).unlink(missing_ok=True)
    bundle_db = open_database(out_dir)
    written = 0
    for task in tasks:
        best = database.query_tuning_record(task.dispatched[0], task.target, task.task_name)
        if best is not None:
            _commit(bundle_db, task.dispatched[0], best)
            written += 1
    for name in RECORDS:
        (out_dir / name).touch()
    return written
