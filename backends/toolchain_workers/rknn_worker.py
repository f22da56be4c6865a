"""Worker (rknn toolchain venv): legal ONNX -> rknn-toolkit2 build (fp16 or int8) -> model.rknn -> simulator outputs.

request JSON (stdin) -> RKNN.config(target_platform, mean/std) -> load_onnx -> build(do_quantization, dataset.txt)
  with RKNN_LOG_LEVEL=5 (the build log holds the compiler's per-layer table: op, dtype, NPU/CPU, cycles, RW KB)
  -> export_rknn -> init_runtime() without a target (the x86 simulator) -> inference on every validation sample
  (simulated.npz) -> reply {layers, memory, timings, versions}

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


def handle(request: dict) -> dict:
    import numpy as np

    os.environ["RKNN_LOG_LEVEL"] = "5"  # the per-layer table with NPU/CPU target and cycles
    from rknn.api import RKNN

    out, work = Path(request["out_dir"]), Path(request["work_dir"])
    work.mkdir(parents=True, exist_ok=True)
    log_path = out / BUILD_LOG
    int8 = request["precision"] == "int8"
    timings = {}
    rknn = RKNN(verbose=True)
    started = time.monotonic()
    progress(f"rknn-toolkit2: building for {request['target_platform']} ({request['precision']})")
    with Captured(log_path):
        rknn.config(
            target_platform=request["target_platform"],
            mean_values=request["mean_values"],
            std_values=request["std_values"],
            optimization_level=request.get("optimization_level", 3),
        )
        if rknn.load_onnx(model=request["onnx"]) != 0:
            raise WorkerError("rknn-toolkit2 could not load the ONNX model", f"see {log_path}")
        dataset = None
        if int8:
            dataset = str(write_dataset(load_inputs(request["calibration"]), work / "calibration"))
        code = rknn.build(do_quantization=int8, dataset=dataset)
    text = log_path.read_text(errors="replace")
    if code != 0:
        errors = [line.strip() for line in text.splitlines() if line.startswith(("E ", "\x1b[1;31mE"))]
        raise WorkerError(
            f"rknn-toolkit2 build failed: {(errors[-1:] or ['no error line'])[0][:300]}", f"see {log_path}"
        )
    timings["build_s"] = time.monotonic() - started
    with Captured(log_path):
        if rknn.export_rknn(str(out / request["rknn_file"])) != 0:
            raise WorkerError("rknn-toolkit2 could not export the .rknn", f"see {log_path}")
        progress("running model.rknn's graph in the rknn simulator (init_runtime without a target)")
        if rknn.init_runtime() != 0:
            raise WorkerError("the rknn simulator did not start", f"see {log_path}")
        started = time.monotonic()
        samples = load_inputs(request["samples"])
        per_sample = []
        for i in range(len(samples[0])):
            outputs = rknn.inference(
                inputs=[np.ascontiguousarray(a[i : i + 1], dtype=np.float32) for a in samples], data_format="nchw"
            )
            if outputs is None:
                raise WorkerError("the rknn simulator returned no outputs", f"see {log_path}")
            per_sample.append([np.asarray(o, dtype=np.float32) for o in outputs])
        timings["simulate_s"] = time.monotonic() - started
        rknn.release()
    stacked = {f"out{k}": np.stack([s[k] for s in per_sample]) for k in range(len(per_sample[0]))}
    np.savez(out / request["simulated"], **stacked)
    import importlib.metadata as md

    return {
        "layers": parse_layers(text),
        "memory": parse_memory(text),
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "versions": {p: md.version(p) for p in ("rknn-toolkit2", "onnx", "onnxruntime", "numpy")},
    }


if __name__ == "__main__":
    serve(handle)
