"""Interrupt matrix (issue 15): SIGINT / SIGTERM / SIGKILL delivered in the middle of each stage of a real build.

python benchmarks/interrupt_matrix.py [--model timm:deit_tiny_patch16_224] [--target x86-cpu] [--work DIR]
1. a good bundle is built (and cached) with the progress lines timed -> how long each stage takes here
2. per (signal, stage): `vdeploy build --no-cache` into the same --out (TMPDIR a folder of its own), the signal sent
   when the stage is 40% through; then: exit 1 and one line (SIGINT/SIGTERM), no process of the build left, --out
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

VDEPLOY = str(Path(sys.executable).with_name("vdeploy"))
STAGES = {  # stage -> the progress line that opens it
    "load": "loading",
    "export": "exporting",
    "legalize": "legalizing",
    "compile": "compiling",
    "validate": "validating",
}
ORDER = [*STAGES, "end"]
FRACTION = 0.4
API = """
import sys, vdeploy
vdeploy.build(sys.argv[1], sys.argv[2], out=sys.argv[3], no_cache=True, progress=lambda l: print("vdeploy:", l,
              file=sys.stderr, flush=True))
"""


def run_timed(cmd: list[str], env: dict) -> tuple[int, dict[str, float], str]:
    """Run a build to the end: exit code, when each stage's line appeared (s from start), stderr."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    seen, lines = {}, []
    for line in proc.stderr:
        lines.append(line)
        for stage, marker in STAGES.items():
            if marker in line and stage not in seen:
                seen[stage] = time.monotonic() - started
    seen["end"] = time.monotonic() - started
    return proc.wait(), seen, "".join(lines)


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


def interrupt(cmd, env, sig, at_s: float, stage_marker: str) -> dict:
    """Start the build, send `sig` `at_s` after the stage's line; the build's processes and its stderr."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    lines: list[str] = []
    reached = threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line)
            if stage_marker in line:
                reached.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not reached.wait(600):
        proc.kill()
        return {"error": "stage never reached", "stderr": "".join(lines)[-2000:]}
    time.sleep(at_s)
    family = descendants(proc.pid) | {proc.pid}
    last_line = [line for line in lines if line.startswith("vdeploy: ")][-1:]
    proc.send_signal(sig)
    try:
        code = proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = "hung"
    reader.join(10)
    time.sleep(2.0)  # PR_SET_PDEATHSIG / the watchdog act within ~0.5 s
    orphans = sorted(pid for pid in family if alive(pid))
    for pid in orphans:
        os.kill(pid, signal.SIGKILL)
    stderr = [line for line in "".join(lines).splitlines() if line.strip()]
    return {
        "exit": code,
        "last_stage_line": last_line[0].strip() if last_line else "",
        "final_line": stderr[-1] if stderr else "",
        "processes": len(family),
        "orphans": orphans,
    }


def leftovers(out: Path, tmpdir: Path, bundle: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p != bundle) + sorted(f"TMP/{p.name}" for p in tmpdir.iterdir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="timm:deit_tiny_patch16_224")
    parser.add_argument("--target", default="x86-cpu")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--signals", default="SIGINT,SIGTERM,SIGKILL,api")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="interrupt-matrix-"))
    out, tmpdir = work / "out", work / "tmp"
    tmpdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmpdir), "VDEPLOY_CACHE": str(work / "cache"), "VDEPLOY_BUILD_CACHE": "on"}
    base = [VDEPLOY, "build", args.model, "--target", args.target, "--out", str(out), "--iters", "200"]

    code, seen, text = run_timed([*base, "--no-cache"], env)
    if code not in (0, 3):
        sys.exit(f"the good build failed ({code}):\n{text[-3000:]}")
    bundle = next(p for p in out.iterdir() if not p.name.startswith("."))
    ok, good = bundle_state(bundle)
    durations = {s: round(seen[ORDER[i + 1]] - seen[s], 2) for i, s in enumerate(ORDER[:-1]) if s in seen}
    print(f"good build: {seen['end']:.1f} s; stage durations (s from its line to the next): {durations}", flush=True)
    records = []
    for name in args.signals.split(","):
        sig = signal.SIGTERM if name == "api" else signal.Signals[name]
        cmd = [sys.executable, "-c", API, args.model, args.target, str(out)] if name == "api" else [*base, "--no-cache"]
        for stage, marker in STAGES.items():
            at = FRACTION * durations.get(stage, 1.0)
            started = time.monotonic()
            record = {"signal": name, "stage": stage, "at_s": round(at, 2), **interrupt(cmd, env, sig, at, marker)}
            record["left_right_after"] = leftovers(out, tmpdir, bundle)
            if sig == signal.SIGKILL:  # the next build sweeps: a cached one, quick
                record["next_build_exit"] = run_timed(base, env)[0]
            record["left"] = leftovers(out, tmpdir, bundle)
            intact, now = bundle_state(bundle)
            record["bundle_intact"] = intact and now == good
            record["seconds"] = round(time.monotonic() - started, 1)
            expected_exit = {"SIGKILL": -9, "api": "any"}.get(name, 1)
            record["ok"] = (
                not record.get("error")
                and not record["orphans"]
                and not record["left"]
                and record["bundle_intact"]
                and (expected_exit == "any" or record["exit"] == expected_exit)
                and (name not in ("SIGINT", "SIGTERM") or record["final_line"].startswith(f"interrupted by {name}"))
            )
            records.append(record)
            print(json.dumps(record), flush=True)
    validate = subprocess.run([VDEPLOY, "validate", str(bundle), "--iters", "20"], env=env, capture_output=True)
    (work / "interrupt_matrix.json").write_text(json.dumps({"durations": durations, "records": records}, indent=1))
    print(f"\n{args.model} on {args.target}; signal at {FRACTION:.0%} of each stage; work dir {work}\n")
    print("| signal | stage | exit | last line | processes / orphans | left in --out + TMP | bundle intact | ok |")
    print("|---|---|---|---|---|---|---|---|")
    for r in records:
        print(
            f"| {r['signal']} | {r['stage']} | {r.get('exit')} | {r.get('final_line', '')[:60]} | "
            f"{r.get('processes')} / {len(r.get('orphans', []))} | "
            f"{', '.join(r.get('left', [])) or 'nothing'}"
            + (f" (after the next build; before: {len(r['left_right_after'])})" if "next_build_exit" in r else "")
            + f" | {r['bundle_intact']} | {'yes' if r['ok'] else 'NO'} |"
        )
    print(f"\nvdeploy validate of the good bundle afterwards: exit {validate.returncode}")
    print(f"all cases ok: {all(r['ok'] for r in records)} ({sum(r['ok'] for r in records)}/{len(records)})")


if __name__ == "__main__":
    main()
