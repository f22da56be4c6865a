"""Worker (rknn toolchain venv): legal ONNX -> rknn-toolkit2 build (fp16 or int8) -> model.rknn -> simulator outputs.

request JSON (stdin) -> RKNN.config(target_platform, mean/std) -> load_onnx -> build(do_quantization, dataset.txt)
  with RKNN_LOG_LEVEL=5 (the build log holds the compiler's per-layer table: op, dtype, NPU/CPU, cycles, RW KB)
  -> export_rknn -> init_runtime() without a target (the x86 simulator) -> inference on every validation sample
  (simulated.npz) -> reply {layers, memory, timings, versions}
request "analyze": the same build, then accuracy_analysis on one sample (the simulator against the toolkit's own
  FP32 run, layer by layer: snapshot/error_analysis.txt) -> reply {analysis: [{name, op, cos/euc entire, single}]}
request "hybrid": ONNX node [input, output] pairs kept in float16 on the NPU (hybrid_quantization_step1 custom_hybrid
  -> step2) instead of a plain build(do_quantization=True)

Standard library, numpy and rknn only (no vdeploy in this venv). The simulator runs only a model built in the same
RKNN object (load_rknn + simulator is refused), so validation happens right after the build.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _protocol import WorkerError, progress, serve  # noqa: E402

BUILD_LOG = "rknn_build.log"
# one row of the "Network Layer Information Table" (librknnc 2.5.0, RKNN_LOG_LEVEL=5):
# D RKNN: [hh:mm:ss.ms] ID OpType DataType Target InputShape OutputShape Cycles(DDR/NPU/Total) RW(KB) FullName
ROW = re.compile(
    r"RKNN: \[[^\]]+\]\s+(\d+)\s+(\S+)\s+(\S+)\s+(NPU|CPU|GPU)\s+(\S+)\s+(\S+)\s+(\d+)/(\d+)/(\d+)\s+"
    r"(\S+)\s+(\S+)"
)
MEMORY = re.compile(r"Total (Internal|Weight) Memory Size: ([\d.]+)\s*(KB|MB)")
# one row of snapshot/error_analysis.txt (accuracy_analysis, 2.5.0): [OpType] name  cos | euc  cos | euc
NUMBER = r"(-?[\d.]+(?:e[-+]?\d+)?|nan|-?inf)"
ANALYSIS_ROW = re.compile(rf"^\[(\S+)\]\s+(\S+)\s+{NUMBER}\s*\|\s*{NUMBER}\s+{NUMBER}\s*\|\s*{NUMBER}", re.I)


class Captured:
    """Redirect this process's fds 1 and 2 (Python and C prints) into a file for the duration of a block."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        self.saved = (os.dup(1), os.dup(2))
        self.file = open(self.path, "ab")
        os.dup2(self.file.fileno(), 1)
        os.dup2(self.file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        for fd in self.saved:
            os.close(fd)
        self.file.close()


def parse_layers(text: str) -> list[dict]:
    """The compiler's per-layer table (the last one printed: the final build) as dicts."""
    tables: list[list[dict]] = []
    current: list[dict] | None = None
    for line in text.splitlines():
        if "Network Layer Information Table" in line:
            current = []
            tables.append(current)
            continue
        if current is None:
            continue
        match = ROW.search(line)
        if match:
            g = match.groups()
            current.append(
                {
                    "id": int(g[0]),
                    "op": g[1],
                    "dtype": g[2],
                    "device": g[3],
                    "cycles_ddr": int(g[6]),
                    "cycles_npu": int(g[7]),
                    "cycles": int(g[8]),
                    "rw_kb": float(g[9]) if g[9].replace(".", "").isdigit() else None,
                    "name": g[10],
                }
            )
        elif current and "-----" in line:
            current = None
    return tables[-1] if tables else []


def parse_memory(text: str) -> dict:
    found = {}
    for kind, value, unit in MEMORY.findall(text):
        found[f"{kind.lower()}_kb"] = float(value) * (1024.0 if unit == "MB" else 1.0)
    return found


def parse_analysis(text: str) -> list[dict]:
    """error_analysis.txt -> [{name, op, cos_entire, euc_entire, cos_single, euc_single}] in the file's order
    (the compiler's execution order). entire: the simulator's value vs the FP32 golden with errors accumulated;
    single: the layer alone, fed the golden inputs."""
    rows = []
    for line in text.splitlines():
        match = ANALYSIS_ROW.match(line.strip())
        if match:
            op, name, *numbers = match.groups()
            cos_e, euc_e, cos_s, euc_s = (float(n) for n in numbers)
            rows.append(
                {
                    "name": name,
                    "op": op,
                    "cos_entire": cos_e,
                    "euc_entire": euc_e,
                    "cos_single": cos_s,
                    "euc_single": euc_s,
                }
            )
    return rows


def load_inputs(path: str):
    import numpy as np

    with np.load(path) as data:
        return [data[f"in{i}"] for i in range(len(data.files))]


def write_dataset(calibration, folder: Path) -> Path:
    """One line per sample: the absolute paths of its NCHW .npy inputs (the compiler resolves relative paths
    against the dataset file's own folder)."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(len(calibration[0])):
        paths = []
        for k, array in enumerate(calibration):
            path = (folder / f"sample{i:04d}_in{k}.npy").resolve()
            np.save(path, np.ascontiguousarray(array[i : i + 1], dtype=np.float32))
            paths.append(str(path))
        lines.append(" ".join(paths))
    dataset = (folder / "dataset.txt").resolve()
    dataset.write_text("\n".join(lines) + "\n")
    return dataset


def build(request: dict, work: Path, log_path: Path, hybrid_level: int):
    """RKNN.config + load_onnx + build at one quantized_hybrid_level (0: plain w8a8; 1+: the compiler keeps the
    layers its own proposal finds sensitive in float16). -> (the RKNN object, this build's log text)."""
    from rknn.api import RKNN

    int8 = request["precision"] == "int8"
    attempt_log = work / f"build_level{hybrid_level}.log"
    rknn = RKNN(verbose=True)
    with Captured(attempt_log):
        rknn.config(
            target_platform=request["target_platform"],
            mean_values=request["mean_values"],
            std_values=request["std_values"],
            optimization_level=request.get("optimization_level", 3),
            quantized_hybrid_level=hybrid_level,
        )
        if rknn.load_onnx(model=request["onnx"]) != 0:
            raise WorkerError("rknn-toolkit2 could not load the ONNX model", f"see {log_path}")
        dataset = None
        if int8:
            dataset = str(write_dataset(load_inputs(request["calibration"]), work / "calibration"))
        code = rknn.build(do_quantization=int8, dataset=dataset)
    text = attempt_log.read_text(errors="replace")
    with open(log_path, "a") as log:
        log.write(text)
    if code != 0:
        errors = [line.strip() for line in text.splitlines() if line.startswith(("E ", "\x1b[1;31mE"))]
        raise WorkerError(
            f"rknn-toolkit2 build failed: {(errors[-1:] or ['no error line'])[0][:300]}", f"see {log_path}"
        )
    return rknn, text


def export_and_simulate(rknn, request: dict, samples, log_path: Path):
    """model.rknn written, then the built graph's outputs in the x86 simulator, stacked over the samples."""
    import numpy as np

    with Captured(log_path):
        if rknn.export_rknn(str(Path(request["out_dir"]) / request["rknn_file"])) != 0:
            raise WorkerError("rknn-toolkit2 could not export the .rknn", f"see {log_path}")
        if rknn.init_runtime() != 0:
            raise WorkerError("the rknn simulator did not start", f"see {log_path}")
        per_sample = []
        for i in range(len(samples[0])):
            outputs = rknn.inference(
                inputs=[np.ascontiguousarray(a[i : i + 1], dtype=np.float32) for a in samples], data_format="nchw"
            )
            if outputs is None:
                raise WorkerError("the rknn simulator returned no outputs", f"see {log_path}")
            per_sample.append([np.asarray(o, dtype=np.float32) for o in outputs])
    return [np.stack([s[k] for s in per_sample]) for k in range(len(per_sample[0]))]


def judge(outputs, reference: str, gate: dict) -> dict:
    """Worst-sample cosine and rel_err of the simulator's outputs against the FP32 legal graph (ONNX Runtime, run by
    vdeploy): the same measures the build's gate uses, against the graph the compiler was given."""
    import numpy as np

    ref = load_inputs(reference)
    worst, rel = 1.0, 0.0
    for out, want in zip(outputs, ref):
        out, want = out.reshape(len(out), -1).astype(np.float64), want.reshape(len(want), -1).astype(np.float64)
        rel = max(rel, float(np.abs(out - want).max() / max(np.abs(want).max(), 1e-12)))
        for a, b in zip(out, want):
            denom = float(np.linalg.norm(a) * np.linalg.norm(b))
            worst = min(worst, float(a @ b / denom) if denom else float(np.array_equal(a, b)))
    holds = worst >= gate["min_cosine"] and rel <= gate["max_rel_err"]
    return {"worst_cosine": round(worst, 6), "rel_err": round(rel, 6), "holds": holds}


def analyze(rknn, request: dict, work: Path, log_path: Path) -> list[dict]:
    """accuracy_analysis on one sample: every layer of the built graph in the simulator against the toolkit's own
    FP32 run (snapshot/error_analysis.txt)."""
    import numpy as np

    samples = load_inputs(request["samples"])
    index = min(request.get("analyze_sample", 0), len(samples[0]) - 1)
    inputs = []
    for k, array in enumerate(samples):
        path = (work / f"analyze_in{k}.npy").resolve()
        np.save(path, np.ascontiguousarray(array[index : index + 1], dtype=np.float32))
        inputs.append(str(path))
    snapshot = (work / "snapshot").resolve()
    with Captured(log_path):
        if rknn.accuracy_analysis(inputs=inputs, output_dir=str(snapshot)) != 0:
            raise WorkerError("rknn-toolkit2 accuracy_analysis failed", f"see {log_path}")
    report = snapshot / "error_analysis.txt"
    if not report.is_file():
        raise WorkerError("accuracy_analysis wrote no error_analysis.txt", f"see {log_path}")
    return parse_analysis(report.read_text(errors="replace"))


def handle(request: dict) -> dict:
    os.environ["RKNN_LOG_LEVEL"] = "5"  # the per-layer table with NPU/CPU target and cycles
    import numpy as np

    out, work = Path(request["out_dir"]), Path(request["work_dir"])
    work.mkdir(parents=True, exist_ok=True)
    log_path = out / BUILD_LOG
    level = int(request.get("hybrid_level", 0))
    started = time.monotonic()
    progress(f"rknn-toolkit2: building for {request['target_platform']} ({request['precision']})")
    rknn, text = build(request, work, log_path, level)
    if request.get("analyze"):
        progress("rknn-toolkit2 accuracy_analysis: each layer in the simulator vs the toolkit's FP32 run")
        rows = analyze(rknn, request, work, log_path)
        rknn.release()
        return {"analysis": rows, "layers": parse_layers(text), "hybrid_level": level}
    timings = {}
    samples = load_inputs(request["samples"])
    progress("running the built graph in the rknn simulator (init_runtime without a target)")
    outputs = export_and_simulate(rknn, request, samples, log_path)
    attempts = []
    gate, reference = request.get("gate"), request.get("reference")
    if request["precision"] == "int8" and gate and reference:
        attempts.append({"hybrid_level": level, **judge(outputs, reference, gate)})
        for fallback in request.get("fallback_levels", []):
            if attempts[-1]["holds"]:
                break
            progress(
                f"INT8 misses the gate (worst-sample cosine {attempts[-1]['worst_cosine']:.4f} vs the FP32 graph): "
                f"rebuilding with quantized_hybrid_level={fallback} (sensitive layers kept in float16)"
            )
            rknn.release()
            rknn, text = build(request, work, log_path, fallback)
            outputs = export_and_simulate(rknn, request, samples, log_path)
            level = fallback
            attempts.append({"hybrid_level": level, **judge(outputs, reference, gate)})
    timings["build_s"] = time.monotonic() - started
    rknn.release()
    np.savez(out / request["simulated"], **{f"out{k}": o for k, o in enumerate(outputs)})
    import importlib.metadata as md

    return {
        "layers": parse_layers(text),
        "memory": parse_memory(text),
        "hybrid_level": level,
        "attempts": attempts,
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "versions": {p: md.version(p) for p in ("rknn-toolkit2", "onnx", "onnxruntime", "numpy")},
    }


if __name__ == "__main__":
    serve(handle)
