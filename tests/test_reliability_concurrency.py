"""Issue 15, defect 4: several processes finishing the same bundle at once (the release matrix runs many builds).

4 writer processes x a few rounds on BundleWriter directly (no model builds): every round must end with exactly one
complete bundle (one writer's files, all matching the manifest), no error in any writer, no debris beside it.
benchmarks/concurrent_builds.py runs the same with real builds, 4 x 100 rounds.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import traceback
from pathlib import Path

import pytest

from vdeploy.bundle import SCHEMA, BundleWriter

WRITERS, ROUNDS, BURST = 4, 10, 6  # each writer finishes BURST bundles back to back per round
TIMEOUT_S = 60


def _write_rounds(out: str, tag: int, start, done, errors) -> None:
    try:
        for round_no in range(ROUNDS):
            start.wait(TIMEOUT_S)  # all writers start together
            for burst in range(BURST):
                with BundleWriter(Path(out), "m-t") as writer:
                    payload = f"writer {tag} round {round_no} burst {burst}\n".encode() * 500
                    (writer.tmp / "model.bin").write_bytes(payload)
                    (writer.tmp / "sub").mkdir()
                    (writer.tmp / "sub" / "extra.bin").write_bytes(payload[::-1])
                    writer.finish({"schema": SCHEMA, "files": writer.file_entries(), "writer": tag, "round": round_no})
            done.wait(TIMEOUT_S)  # the parent checks the bundle
            done.wait(TIMEOUT_S)  # ... and lets the next round start
    except BaseException:
        errors.put(f"writer {tag}: {traceback.format_exc(limit=3)}")
        start.abort()
        done.abort()


def _check_bundle(bundle: Path, round_no: int) -> str | None:
    """None when the bundle is whole and from one writer of this round, else what is wrong."""
    try:
        manifest = json.loads((bundle / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        return f"manifest unreadable: {exc}"
    if manifest.get("round") != round_no:
        return f"bundle from round {manifest.get('round')}, expected {round_no}"
    on_disk = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    listed = sorted(f["path"] for f in manifest["files"])
    if on_disk != sorted([*listed, "manifest.json"]):
        return f"files {on_disk} do not match the manifest's {listed}"
    for entry in manifest["files"]:
        if hashlib.sha256((bundle / entry["path"]).read_bytes()).hexdigest() != entry["sha256"]:
            return f"{entry['path']} is not the manifest's (a mixed bundle)"
    return None


@pytest.mark.parametrize("swap", ["rename-exchange", "lock-file"])
def test_concurrent_finish_leaves_one_whole_bundle_every_round(tmp_path, monkeypatch, swap):
    """Before the fix: OSError 'Directory not empty', FileNotFoundError, a left-over .old-PID dir. `lock-file`: the
    path taken where renameat2 is missing (the forked writers inherit the patch)."""
    if swap == "lock-file":
        monkeypatch.setattr("vdeploy.atomic._exchange_supported", lambda parent: False)
    ctx = mp.get_context("fork")
    start, done = ctx.Barrier(WRITERS), ctx.Barrier(WRITERS + 1)
    errors = ctx.Queue()
    out = tmp_path / "out"
    procs = [ctx.Process(target=_write_rounds, args=(str(out), t, start, done, errors)) for t in range(WRITERS)]
    for proc in procs:
        proc.start()
    problems = []
    try:
        for round_no in range(ROUNDS):
            done.wait(TIMEOUT_S)
            wrong = _check_bundle(out / "m-t", round_no)
            debris = sorted(p.name for p in out.iterdir() if p.name not in ("m-t", ".m-t.lock"))
            if wrong or debris:
                problems.append(f"round {round_no}: {wrong or ''} {debris or ''}")
            done.wait(TIMEOUT_S)
    except Exception as exc:  # a broken barrier: a writer failed (its error is in the queue)
        problems.append(f"{type(exc).__name__}")
    for proc in procs:
        proc.join(TIMEOUT_S)
    while not errors.empty():
        problems.append(errors.get())
    assert not problems, "\n".join(problems)
    assert all(proc.exitcode == 0 for proc in procs)
    assert (out / ".m-t.lock").exists() == (swap == "lock-file")  # the path under test was the one taken


def _fresh_out(out: str, tag: int, start, errors) -> None:
    try:
        start.wait(TIMEOUT_S)
        with BundleWriter(Path(out), f"m{tag}-t") as writer:
            (writer.tmp / "a.bin").write_bytes(b"x")
            writer.finish({"schema": SCHEMA, "files": writer.file_entries()})
    except BaseException:
        errors.put(f"writer {tag}: {traceback.format_exc(limit=3)}")


def test_concurrent_builds_can_create_a_fresh_out_dir(tmp_path):
    """Before the fix: 'cannot write a bundle in OUT: File exists' for all but the first to mkdir it."""
    ctx = mp.get_context("fork")
    errors = ctx.Queue()
    for attempt in range(6):
        out = tmp_path / f"fresh{attempt}" / "nested" / "out"
        start = ctx.Barrier(WRITERS)
        procs = [ctx.Process(target=_fresh_out, args=(str(out), t, start, errors)) for t in range(WRITERS)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(TIMEOUT_S)
        problems = [errors.get() for _ in range(errors.qsize())] if not errors.empty() else []
        assert not problems, "\n".join(problems)
        assert sorted(p.name for p in out.iterdir()) == [f"m{t}-t" for t in range(WRITERS)]
