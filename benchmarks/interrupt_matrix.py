"""Interrupt matrix (issue 15): SIGINT / SIGTERM / SIGKILL delivered in the middle of each stage of a real build.

python benchmarks/interrupt_matrix.py [--model timm:deit_tiny_patch16_224] [--target x86-cpu] [--work DIR]
The CLI runs with one instrument added to the plan (a line when each stage begins and ends: the harness's clock).
1. a good bundle is built (and cached), each plan stage timed -> how long each stage takes here
2. per (signal, stage): `vdeploy build --no-cache` into the same --out (TMPDIR a folder of its own), the signal sent
   40% into the stage (retried earlier if the stage had ended: it must land inside); then: exit 1 and one line
   (SIGINT/SIGTERM), no process of the build left, --out
   holds only the good bundle (files verify, manifest unchanged), the temp dir is empty. After a SIGKILL the same
   checks run after the next build (a cached one: it sweeps what the killed one left).
   The `api` column sends SIGTERM to a Python process inside vdeploy.build() (the API's path).
3. a markdown table on stdout, the records as JSON in WORK/interrupt_matrix.json; `vdeploy validate` of the good
   bundle at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

STAGES = {"load": "load", "export": "export", "legalize": "legalize", "compile": "compile", "validate": "run"}
FRACTION = 0.4  # of the stage's duration in the good build; halved and retried when the stage ended first
DRIVER = """
import sys, time
import vdeploy.plan as plan

class StageMarks(plan.Instrument):  # the harness's clock on the plan: when each stage begins and ends
    def before(self, stage, state):
        print(f"vdeploy-stage: begin {stage.name} {time.monotonic():.3f}", file=sys.stderr, flush=True)

    def after(self, stage, state):
        print(f"vdeploy-stage: end {stage.name} {time.monotonic():.3f}", file=sys.stderr, flush=True)

_default = plan.default_instruments
plan.default_instruments = lambda: (*_default(), StageMarks())
"""
CLI = DRIVER + "from vdeploy.cli import main\nsys.argv = ['vdeploy', *sys.argv[1:]]\nmain()\n"
API = DRIVER + (
    "import vdeploy\nvdeploy.build(sys.argv[1], sys.argv[2], out=sys.argv[3], iters=int(sys.argv[4]), no_cache=True)\n"
)


def marks(lines: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    begin, end = {}, {}
    for line in lines:
        if line.startswith("vdeploy-stage: "):
            _, kind, name, at = line.split()
            (begin if kind == "begin" else end).setdefault(name, float(at))
    return begin, end


def run_timed(cmd: list[str], env: dict) -> tuple[int, dict[str, float], str]:
    """Run a build to the end: exit code, each plan stage's duration (s), stderr."""
    proc = subprocess.run(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    begin, end = marks(proc.stderr.splitlines())
    return proc.returncode, {k: round(end[k] - begin[k], 2) for k in begin if k in end}, proc.stderr


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def bundle_state(bundle: Path) -> tuple[bool, dict]:
    """(every file matches its manifest hash, the manifest without its measured section)."""
    try:
        manifest = json.loads((bundle / "manifest.json").read_text())
        ok = all(
            hashlib.sha256((bundle / f["path"]).read_bytes()).hexdigest() == f["sha256"] for f in manifest["files"]
        )
    except (OSError, ValueError, KeyError):
        return False, {}
    return ok, {k: v for k, v in manifest.items() if k != "measured"}


def interrupt(cmd, env, sig, stage: str, delay_s: float) -> dict:
    """Start the build, send `sig` `delay_s` into `stage`; what happened (and whether it landed inside the stage)."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    lines: list[str] = []
    reached = threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            if line.startswith(f"vdeploy-stage: begin {stage} "):
                reached.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not reached.wait(900):
        proc.kill()
        return {"error": "stage never reached", "stderr": "\n".join(lines)[-2000:]}
    time.sleep(delay_s)
    family = descendants(proc.pid) | {proc.pid}
    proc.send_signal(sig)
    try:
        code = proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = "hung"
    reader.join(10)
    time.sleep(2.0)  # PR_SET_PDEATHSIG / the worker's watchdog act within ~0.5 s
    orphans = sorted(pid for pid in family if alive(pid))
    for pid in orphans:
        os.kill(pid, signal.SIGKILL)
    begin, end = marks(lines)
    shown = [line for line in lines if line.strip() and not line.startswith("vdeploy-stage: ")]
    return {
        "exit": code,
        "landed_in_stage": stage in begin and stage not in end,
        "final_line": shown[-1] if shown else "",
        "processes": len(family),
        "orphans": orphans,
    }


def leftovers(out: Path, tmpdir: Path, bundle: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p != bundle) + sorted(f"TMP/{p.name}" for p in tmpdir.iterdir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="timm:deit_tiny_patch16_224")
    parser.add_argument("--target", default="x86-cpu")
    parser.add_argument("--iters", default="300")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--signals", default="SIGINT,SIGTERM,SIGKILL,api")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="interrupt-matrix-"))
    out, tmpdir = work / "out", work / "tmp"
    tmpdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmpdir), "VDEPLOY_CACHE": str(work / "cache"), "VDEPLOY_BUILD_CACHE": "on"}
    build_args = ["build", args.model, "--target", args.target, "--out", str(out), "--iters", args.iters]
    cli = [sys.executable, "-c", CLI, *build_args]

    code, durations, text = run_timed([*cli, "--no-cache"], env)
    if code not in (0, 3):
        sys.exit(f"the good build failed ({code}):\n{text[-3000:]}")
    bundle = next(p for p in out.iterdir() if not p.name.startswith("."))
    ok, good = bundle_state(bundle)
    print(f"good build (cached for the sweeping rebuilds): stage durations {durations} s", flush=True)
    records = []
    for name in args.signals.split(","):
        sig = signal.SIGTERM if name == "api" else signal.Signals[name]
        cmd = [sys.executable, "-c", API, args.model, args.target, str(out), args.iters] if name == "api" else cli
        cmd = cmd if name == "api" else [*cmd, "--no-cache"]
        for label, stage in STAGES.items():
            started, fraction = time.monotonic(), FRACTION
            for attempt in range(1, 4):
                delay = round(fraction * durations.get(stage, 1.0), 2)
                record = {"signal": name, "stage": label, "delay_s": delay, "attempt": attempt}
                record.update(interrupt(cmd, env, sig, stage, delay))
                if record.get("landed_in_stage") or record.get("error"):
                    break
                fraction /= 2
                if sig == signal.SIGKILL:
                    run_timed([*cli], env)  # sweep before the retry
            record["left_right_after"] = leftovers(out, tmpdir, bundle)
            if sig == signal.SIGKILL:  # the next build sweeps: a cached one, quick
                record["next_build_exit"] = run_timed(cli, env)[0]
            record["left"] = leftovers(out, tmpdir, bundle)
            intact, now = bundle_state(bundle)
            record["bundle_intact"] = intact and now == good
            record["seconds"] = round(time.monotonic() - started, 1)
            expected_exit = {"SIGKILL": -9, "api": "any"}.get(name, 1)
            record["ok"] = bool(
                not record.get("error")
                and record["landed_in_stage"]
                and not record["orphans"]
                and not record["left"]
                and record["bundle_intact"]
                and (expected_exit == "any" or record["exit"] == expected_exit)
                and (name not in ("SIGINT", "SIGTERM") or record["final_line"].startswith(f"interrupted by {name}"))
            )
            records.append(record)
            print(json.dumps(record), flush=True)
    validate = subprocess.run(
        [str(Path(sys.executable).with_name("vdeploy")), "validate", str(bundle), "--iters", "20"],
        env=env,
        capture_output=True,
    )
    (work / "interrupt_matrix.json").write_text(json.dumps({"durations": durations, "records": records}, indent=1))
    print(
        f"\n{args.model} on {args.target}; signal {FRACTION:.0%} into each stage (less on a retry); work dir {work}\n"
    )
    print("| signal | stage (plan) | delay s | exit | last line | processes / orphans | left in --out + TMP | bundle |")
    print("|---|---|---|---|---|---|---|---|")
    for r in records:
        left = ", ".join(r.get("left", [])) or "nothing"
        if "next_build_exit" in r:
            left += f" (after the next build; {len(r['left_right_after'])} right after the kill)"
        print(
            f"| {r['signal']} | {r['stage']} ({STAGES[r['stage']]}) | {r['delay_s']} | {r.get('exit')} | "
            f"{r.get('final_line', '')[:70]} | {r.get('processes')} / {len(r.get('orphans', []))} | {left} | "
            f"{'intact' if r['bundle_intact'] else 'CHANGED'} |" + ("" if r["ok"] else " **FAILED**")
        )
    print(f"\nvdeploy validate of the good bundle afterwards: exit {validate.returncode}")
    print(f"all cases ok: {all(r['ok'] for r in records)} ({sum(r['ok'] for r in records)}/{len(records)})")


if __name__ == "__main__":
    main()
