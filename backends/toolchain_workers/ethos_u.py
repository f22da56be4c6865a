"""Worker (arm toolchain venv): PyTorch .pt2 -> fully INT8 TFLite -> LiteRT host numerics -> Vela for an Ethos-U.

request JSON (stdin) -> vela_lowering.vela_friendly (exact rewrites of the program: global-average MEAN -> AVG_POOL,
  5-D attention permute split) -> litert_torch.convert (FP32 .tflite) -> ai_edge_quantizer static wi8_ai8 with the
  calibration samples (INT8 .tflite) -> LiteRT interpreter on the validation samples (simulated.npz)
  -> vela --accelerator-config (model_vela.tflite, summary CSV) -> per-op placement (which ops Vela left to the
  CPU, with its reasons) -> reply JSON

Runs with the standard library and the vendor packages only (no vdeploy in this venv). The reply is the last stdout
line; "progress: ..." lines are forwarded to the user.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np


def progress(text: str) -> None:
    print(f"progress: {text}", flush=True)


def reply(payload: dict) -> None:
    print(json.dumps(payload), flush=True)


def load_inputs(path: str) -> list[np.ndarray]:
    """An .npz of {in0, in1, ...}: each the samples stacked on the batch axis ([N, C, H, W] for batch-1 images)."""
    with np.load(path) as data:
        return [data[f"in{i}"] for i in range(len(data.files))]


def to_float_tflite(pt2: Path, example: list[np.ndarray], out: Path) -> dict[str, int]:
    """The program, with the exact rewrites of vela_lowering.py, as an FP32 .tflite; -> the rewrites that fired."""
    import litert_torch
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from vela_lowering import vela_friendly

    module, fired = vela_friendly(torch.export.load(str(pt2)).module())
    args = tuple(torch.from_numpy(a) for a in example)
    litert_torch.convert(module, args).export(str(out))
    return fired


def signature(model_path: Path) -> tuple[str, list[str], list[str]]:
    """(signature key, input names in positional order, output names in order) of a .tflite."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(model_path))
    key, sig = next(iter(interp.get_signature_list().items()))
    runner = interp.get_signature_runner(key)
    inputs = sorted(runner.get_input_details().items(), key=lambda kv: kv[1]["index"])
    outputs = sorted(runner.get_output_details().items(), key=lambda kv: kv[1]["index"])
    names_in = [n for n, _ in inputs]
    # litert_torch names positional inputs args_0, args_1, ...: order by that number where present
    if all(re.fullmatch(r"args_\d+", n) for n in names_in):
        names_in.sort(key=lambda n: int(n.split("_")[1]))
    names_out = [n for n, _ in outputs]
    if all(re.fullmatch(r"output_\d+", n) for n in names_out):
        names_out.sort(key=lambda n: int(n.split("_")[1]))
    return key, names_in, names_out


def quantize_int8(float_model: Path, calibration: list[np.ndarray], out: Path) -> dict:
    """Static INT8 weights and activations (ai-edge-quantizer recipe static_wi8_ai8), calibrated on the samples."""
    from ai_edge_quantizer import quantizer, recipe

    key, names_in, _ = signature(float_model)
    qt = quantizer.Quantizer(str(float_model))
    qt.load_quantization_recipe(recipe.static_wi8_ai8())
    count = len(calibration[0])
    data = {key: [{n: a[i : i + 1] for n, a in zip(names_in, calibration)} for i in range(count)]}
    result = qt.quantize(qt.calibrate(data))
    result.export_model(str(out), overwrite=True)
    return {"recipe": "static_wi8_ai8", "calibration_samples": count}


def litert_runner(model_path: Path):
    """run(arrays) -> float outputs of a .tflite in the LiteRT interpreter. A fully INT8 model has INT8 inputs and
    outputs: inputs are quantized with the model's own input scale/zero point, outputs dequantized likewise."""
    from ai_edge_litert.interpreter import Interpreter

    key, names_in, names_out = signature(model_path)
    runner = Interpreter(model_path=str(model_path)).get_signature_runner(key)
    details_in, details_out = runner.get_input_details(), runner.get_output_details()

    def quantize(name, array):
        d = details_in[name]
        scale, zero = d["quantization"]
        if np.issubdtype(d["dtype"], np.integer) and scale:
            info = np.iinfo(d["dtype"])
            return np.clip(np.round(array / scale) + zero, info.min, info.max).astype(d["dtype"])
        return array.astype(d["dtype"])

    def dequantize(name, array):
        scale, zero = details_out[name]["quantization"]
        array = np.asarray(array)
        if np.issubdtype(array.dtype, np.integer) and scale:
            return ((array.astype(np.float32) - zero) * scale).astype(np.float32)
        return array

    def run(arrays):
        result = runner(**{n: quantize(n, a) for n, a in zip(names_in, arrays)})
        return [dequantize(n, result[n]) for n in names_out]  # batch axis kept

    return run


def run_litert(model_path: Path, samples: list[np.ndarray]) -> list[np.ndarray]:
    """Outputs of the .tflite in the LiteRT interpreter, stacked over the samples."""
    run = litert_runner(model_path)
    per_sample = [run([a[i : i + 1] for a in samples]) for i in range(len(samples[0]))]
    return [np.stack([s[k] for s in per_sample]) for k in range(len(per_sample[0]))]


def tflite_ops(path: Path) -> list[dict]:
    """Every operator of subgraph 0 of a .tflite: {"name": its first output tensor, "op": builtin or custom code}."""
    from ethosu.vela.tflite.BuiltinOperator import BuiltinOperator
    from ethosu.vela.tflite.Model import Model

    builtin = {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}
    model = Model.GetRootAsModel(path.read_bytes(), 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        number = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = builtin.get(number, str(number))
        codes.append(code.CustomCode().decode() if name == "CUSTOM" and code.CustomCode() else name)
    graph = model.Subgraphs(0)
    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        out = graph.Tensors(op.Outputs(0)).Name().decode() if op.OutputsLength() else f"op{i}"
        ops.append({"name": out, "op": codes[op.OpcodeIndex()]})
    return ops


# Vela 5.2: "Warning (supported operators) operator: MEAN, ofm: 'name'" then "Reason: ..." and detail lines
CPU_WARNING = re.compile(r"Warning \(supported operators\) operator: (\w+), ofm: '([^']*)'")
OLD_CPU_WARNING = re.compile(r"Warning: Unsupported TensorFlow Lite semantics for (\w+) '([^']*)'\. Placing on CPU")


def cpu_reasons(text: str) -> dict[str, str]:
    """{output tensor name: reason} from Vela's placement warnings (the lines after each warning, to a blank one)."""
    reasons: dict[str, str] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = CPU_WARNING.search(line) or OLD_CPU_WARNING.search(line)
        if not match:
            continue
        detail = []
        for follow in lines[i + 1 : i + 6]:
            if not follow.strip() or follow.startswith("Warning"):
                break
            detail.append(follow.strip().lstrip("- ").removeprefix("Reason: ").strip())
        reasons[match.group(2)] = "; ".join(detail) or line.split(": ", 1)[-1]
    return reasons


def placement(int8_model: Path, vela_model: Path, vela_log: str) -> dict:
    """Per original INT8 op: NPU unless it survives as a TFLite builtin in Vela's output (then CPU, with the reason)."""
    left = {o["name"] for o in tflite_ops(vela_model) if o["op"] != "ethos-u"}
    reasons = cpu_reasons(vela_log)
    layers = []
    for op in tflite_ops(int8_model):
        on_cpu = op["name"] in left or op["name"] in reasons
        layers.append(
            {
                "name": op["name"],
                "op": op["op"],
                "device": "CPU" if on_cpu else "NPU",
                "reason": reasons.get(op["name"], "left to the CPU by Vela" if on_cpu else ""),
            }
        )
    counts = {
        "NPU": sum(lay["device"] == "NPU" for lay in layers),
        "CPU": sum(lay["device"] == "CPU" for lay in layers),
    }
    return {"source": "vela", "counts": counts, "layers": layers}


def read_summary(path: Path) -> dict:
    """The one row of Vela's *_summary_*.csv as {column: value}."""
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return {k.strip(): v.strip() for k, v in rows[0].items() if k}


def number(summary: dict, *keys: str) -> float | None:
    for key in keys:
        value = summary.get(key)
        if value not in (None, "", "N/A"):
            try:
                return float(value)
            except ValueError:
                continue
    return None


def run_vela(int8_model: Path, out_dir: Path, request: dict) -> tuple[Path, Path, str, float]:
    # python -m: the venv's entry-point scripts carry the path of the folder the venv was built in (renamed since)
    argv = [
        sys.executable,
        "-m",
        "ethosu.vela",
        str(int8_model),
        "--output-dir",
        str(out_dir),
        "--accelerator-config",
        request["accelerator"],
        "--optimise",
        request.get("optimise", "Performance"),
    ]
    for flag, key in (("--system-config", "system_config"), ("--memory-mode", "memory_mode"), ("--config", "config")):
        if request.get(key):
            argv += [flag, request[key]]
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.monotonic() - started
    log = proc.stdout + proc.stderr
    (out_dir / "vela.log").write_text(" ".join(argv) + "\n" + log)
    if proc.returncode != 0:
        lines = [line.strip() for line in log.splitlines() if line.strip() and not line.startswith("Warning: No conf")]
        how = f"crashed (signal {-proc.returncode})" if proc.returncode < 0 else f"failed (exit {proc.returncode})"
        raise RuntimeError(f"vela {how}: {(lines[-1:] or ['no output'])[0][:300]}")
    compiled = out_dir / f"{int8_model.stem}_vela.tflite"
    summaries = sorted(out_dir.glob(f"{int8_model.stem}_summary_*.csv"))
    if not compiled.is_file() or not summaries:
        raise RuntimeError(f"vela wrote no {compiled.name} / summary CSV in {out_dir}")
    return compiled, summaries[0], log, seconds


def main() -> None:
    request = json.loads(sys.stdin.read())
    out = Path(request["out_dir"])
    work = Path(request["work_dir"])
    work.mkdir(parents=True, exist_ok=True)
    timings = {}
    started = time.monotonic()
    calibration = load_inputs(request["calibration"])
    samples = load_inputs(request["samples"])
    progress("converting the PyTorch program to TFLite (litert-torch)")
    float_model = work / "model_fp32.tflite"
    lowering = to_float_tflite(Path(request["program"]), [a[:1] for a in samples], float_model)
    timings["convert_s"] = time.monotonic() - started
    progress(f"quantizing to INT8 with ai-edge-quantizer ({len(calibration[0])} calibration samples)")
    int8_model = out / "model_int8.tflite"
    quant = {**quantize_int8(float_model, calibration, int8_model), "lowering": lowering}
    timings["quantize_s"] = time.monotonic() - started - timings["convert_s"]
    progress("running the INT8 .tflite in the LiteRT interpreter (host numerics)")
    outputs = run_litert(int8_model, samples)
    np.savez(out / request["simulated"], **{f"out{i}": o for i, o in enumerate(outputs)})
    progress(f"compiling with Vela for {request['accelerator']}")
    vela_dir = work / "vela"
    vela_dir.mkdir(exist_ok=True)
    compiled, summary_csv, log, vela_s = run_vela(int8_model, vela_dir, request)
    timings["vela_s"] = vela_s
    shutil.copyfile(compiled, out / "model_vela.tflite")
    shutil.copyfile(summary_csv, out / "vela_summary.csv")
    shutil.copyfile(vela_dir / "vela.log", out / "vela.log")
    summary = read_summary(summary_csv)
    place = placement(int8_model, compiled, log)
    import importlib.metadata as md

    reply(
        {
            "ok": True,
            "summary": summary,
            "placement": place,
            "quantization": quant,
            "timings_s": {k: round(v, 2) for k, v in timings.items()},
            "estimate": {
                "latency_ms": (number(summary, "inference_time") or 0.0) * 1000.0,
                "cycles": number(summary, "cycles_total"),
                "sram_kb": number(summary, "sram_memory_used"),
                "flash_kb": number(summary, "off_chip_flash_memory_used"),
                "dram_kb": number(summary, "dram_memory_used"),
                "npu_share_pct": None,
            },
            "versions": {
                p: md.version(p)
                for p in ("ethos-u-vela", "litert-torch", "ai-edge-quantizer", "ai-edge-litert", "torch")
            },
        }
    )


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # one line for the user; the traceback stays in the worker's log
        traceback.print_exc()
        reply(
            {
                "ok": False,
                "message": f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}",
                "hint": "see the worker log",
            }
        )
