"""Worker (rknn toolchain venv): compile many one-op ONNX models, report where the compiler put each (op probe).

request {"models": [{"op", "case", "path"}], "target_platform", "work_dir"} -> for each (until one case of an op
  builds): RKNN.config + load_onnx +
  build(fp16) with RKNN_LOG_LEVEL=5 -> the per-layer table (rknn_worker.parse_layers) -> {"op", "case", "status":
  "built" | "refused", "layers": [{op, device, name}], "error"} -> reply {"results", "versions"}; each build runs in
  a forked child, so a compiler crash (Resize cubic: SIGSEGV) refuses that model only

Standard library, numpy and rknn only. scripts/probe_rknn_ops.py builds the models and reads the reply.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _protocol import progress, serve  # noqa: E402
from rknn_worker import Captured, parse_layers  # noqa: E402


def probe(model: dict, platform: str, work: Path) -> dict:
    from rknn.api import RKNN

    log = work / f"{model['case']}.log"
    rknn = RKNN(verbose=True)
    with Captured(log):
        try:
            rknn.config(target_platform=platform)
            code = rknn.load_onnx(model=model["path"])
            if code == 0:
                code = rknn.build(do_quantization=False)
        except Exception as exc:  # noqa: BLE001 - a refusal is a result here
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            code, error = -1, f"{type(exc).__name__}: {(lines[-1] if lines else '')[:200]}"
        else:
            error = ""
        finally:
            rknn.release()
    text = log.read_text(errors="replace")
    if code != 0 and not error:
        errors = [line.strip() for line in text.splitlines() if line.startswith(("E ", "\x1b[1;31mE"))]
        error = (errors[-1:] or ["build failed"])[0][:200]
    layers = [
        {"op": row["op"], "device": row["device"], "name": row["name"]}
        for row in parse_layers(text)
        if row["op"] not in ("InputOperator", "OutputOperator")
    ]
    return {
        "op": model["op"],
        "case": model["case"],
        "status": "built" if code == 0 else "refused",
        "layers": layers,
        "error": error,
    }


def isolated(model: dict, platform: str, work: Path) -> dict:
    """probe() in a forked child (rknn imported once, in the parent): a compiler crash refuses that model only."""
    import json

    result_path = work / f"{model['case']}.json"
    pid = os.fork()
    if pid == 0:
        try:
            result_path.write_text(json.dumps(probe(model, platform, work)))
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    if result_path.is_file():
        return json.loads(result_path.read_text())
    how = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"
    return {
        "op": model["op"],
        "case": model["case"],
        "status": "refused",
        "layers": [],
        "error": f"compiler crashed ({how})",
    }


def handle(request: dict) -> dict:
    os.environ["RKNN_LOG_LEVEL"] = "5"
    import rknn.api  # noqa: F401 - imported once here; each probe runs in a fork of this process

    work = Path(request["work_dir"])
    work.mkdir(parents=True, exist_ok=True)
    results, built = [], set()
    for i, model in enumerate(request["models"]):
        if model["op"] in built:  # the op's first case that builds decides: skip its other cases
            continue
        progress(f"probe {i + 1}/{len(request['models'])}: {model['case']}")
        results.append(isolated(model, request["target_platform"], work))
        if results[-1]["status"] == "built":
            built.add(model["op"])
    import importlib.metadata as md

    return {"results": results, "versions": {"rknn-toolkit2": md.version("rknn-toolkit2")}}


if __name__ == "__main__":
    serve(handle)
