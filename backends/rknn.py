"""Rockchip RK3566/RK3576/RK3588 NPUs: the legal FP32 ONNX -> rknn-toolkit2 (fp16 or int8) -> model.rknn.

job.model (legal ONNX, opset <= 19) + job.calibration (int8: NCHW .npy files listed in dataset.txt, absolute paths)
  --rknn venv worker rknn_worker.py--> RKNN.config/load_onnx/build/export_rknn -> model.rknn + rknn_build.log
  -> init_runtime() without a target (the x86 simulator) on the validation samples -> simulated.npz
  int8: the simulator's outputs judged against the FP32 legal graph (ONNX Runtime) with the target's gate; a miss
  rebuilds with quantized_hybrid_level = int8_fallback_levels in turn (the compiler keeps the layers its own proposal
  finds sensitive in float16 on the NPU) until the gate holds
analyze_layers(): the same build, then accuracy_analysis (vdeploy debug): per-layer cosine, simulator vs FP32
Artifact.details: "simulated" (the simulator's outputs, judged against PyTorch), "placement" (the compiler's own
per-layer NPU/CPU table, each layer tied to the ONNX node it came from), "estimate" (the compiler's cycles / the NPU
clock: source "rknn-estimate", never a measurement).
open(): the legal ONNX in ONNX Runtime (a second witness on this host; the .rknn runs only in the simulator or on
the board, where run_rknn.py uses rknn-toolkit-lite2).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from vdeploy.backends.base import Artifact, BackendBase, CompileJob, Int8Form
from vdeploy.errors import BackendError

TOOLCHAIN = "rknn"
RKNN_FILE, ONNX_FILE, SIMULATED, RUNNER = "model.rknn", "model.onnx", "simulated.npz", "run_rknn.py"
BOUNDARY = ("InputOperator", "OutputOperator")  # the compiler's own graph inputs/outputs (always "CPU")


class RknnOptions(BaseModel):
    """What RKNN.config takes for a target (rknn-toolkit2 2.5.0 API)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_platform: str  # rk3588, rk3576, rk3566, ...
    npu_clock_mhz: float = Field(gt=0)  # converts the compiler's cycle estimate to milliseconds (cite the source)
    optimization_level: int = 3
    hybrid_level: int = Field(default=0, ge=0)  # RKNN.config quantized_hybrid_level of the first INT8 build
    # INT8 gate missed (simulator vs the FP32 legal graph): rebuild at these levels in turn; () = no fallback
    int8_fallback_levels: tuple[int, ...] = (1,)
    mean: tuple[float, ...] | None = None  # --mean / --std (0-1 scale): baked into the .rknn so the board feeds
    std: tuple[float, ...] | None = None  # uint8 pixels (mean*255, std*255 in RKNN.config)
    timeout_s: float = 1800.0


def toolchains():
    from vdeploy.backends import toolchains as module

    return module


def onnx_node_for(layer_name: str, nodes: dict[str, str]) -> str | None:
    """The ONNX node a compiler layer came from: its FullName is "<rknn op>:<ONNX node name><suffixes>" where the
    suffixes are the compiler's own (#1, _2sdpa, _ConvAdd, _rs, -rs, ...). Longest ONNX name that prefixes it wins."""
    name = layer_name.split(":", 1)[-1]
    best = None
    for node in nodes:
        if name == node or (name.startswith(node) and name[len(node)] in "#_-"):
            if best is None or len(node) > len(best):
                best = node
    return best


def placement_of(layers: list[dict], model) -> dict:
    """The compiler's table -> {"source", "counts", "layers", "fallen_back", "onnx_ops": {op: {NPU: n, CPU: m}}}."""
    nodes = {n.name: n.op_type for n in model.graph.node if n.name}
    rows = []
    for layer in layers:
        if layer["op"] in BOUNDARY:
            continue
        node = onnx_node_for(layer["name"], nodes)
        rows.append(
            {
                "name": layer["name"],
                "op": layer["op"],
                "device": layer["device"],
                "dtype": layer["dtype"],
                "cycles": layer["cycles"],
                "onnx_node": node,
                "onnx_op": nodes.get(node) if node else None,
                "reason": ""
                if layer["device"] == "NPU"
                else ("placed on the CPU by rknn-toolkit2" if node else "layout op the compiler inserted (CPU)"),
            }
        )
    counts = {"NPU": sum(r["device"] == "NPU" for r in rows), "CPU": sum(r["device"] == "CPU" for r in rows)}
    by_op: dict[str, dict[str, int]] = {}
    for row in rows:
        if row["onnx_op"]:
            cell = by_op.setdefault(row["onnx_op"], {"NPU": 0, "CPU": 0})
            cell[row["device"] if row["device"] in cell else "CPU"] += 1
    fallen = [
        {"layer": r["name"], "op": r["op"], "onnx_node": r["onnx_node"], "onnx_op": r["onnx_op"]}
        for r in rows
        if r["device"] != "NPU"
    ]
    share = round(100.0 * counts["NPU"] / max(1, counts["NPU"] + counts["CPU"]), 1)
    return {
        "source": "rknn-toolkit2 build log (RKNN_LOG_LEVEL=5)",
        "counts": counts,
        "npu_share_pct": share,
        "layers": rows,
        "fallen_back": fallen,
        "onnx_ops": dict(sorted(by_op.items())),
    }


def scale_of(options: RknnOptions, channels: int) -> tuple[list[float], list[float]]:
    """(mean_values, std_values) for RKNN.config in pixel units; identity without --mean/--std."""
    if options.mean is None and options.std is None:
        return [0.0] * channels, [1.0] * channels
    if options.mean is None or options.std is None:
        raise BackendError("--mean and --std must be given together for an RKNN build", "pass both, or neither")
    mean, std = options.mean, options.std
    if len(mean) != channels or len(std) != channels:
        raise BackendError(
            f"--mean/--std give {len(mean)}/{len(std)} values for a {channels}-channel input",
            f"pass {channels} comma-separated values to each",
        )
    return [m * 255.0 for m in mean], [s * 255.0 for s in std]


class RknnBackend(BackendBase):
    name = "rknn"
    options_model: ClassVar = RknnOptions
    int8_form = Int8Form.toolchain  # the graph stays FP32; rknn-toolkit2 quantizes from the calibration set
    power_meters = ()  # no meter sees the board's NPU from here

    def available(self) -> bool:
        return toolchains().installed(TOOLCHAIN)

    def version(self) -> str:
        return toolchains().versions(TOOLCHAIN).get("rknn-toolkit2", "not installed")

    def toolchain(self) -> dict[str, str]:
        return toolchains().versions(TOOLCHAIN)

    def compile(self, job: CompileJob) -> Artifact:
        options: RknnOptions = job.options
        with tempfile.TemporaryDirectory(prefix="vdeploy-rknn-") as tmp:
            work = Path(tmp)
            request, calib_info = self._request(job, work)
            if job.precision == "int8" and options.int8_fallback_levels:
                tolerance = job.target.spec.tolerances.get("int8") if job.target is not None else None
                if tolerance is not None:
                    request["gate"] = {"min_cosine": tolerance.min_cosine, "max_rel_err": tolerance.max_rel_err}
                    request["reference"] = str(_reference(job, work / "reference.npz"))
                    request["fallback_levels"] = [
                        lv for lv in options.int8_fallback_levels if lv > options.hybrid_level
                    ]
            reply = _call_worker(request, options, job, work)
            shutil.copyfile(work / "rknn_worker.log", job.out_dir / "rknn_worker.log")
        if not reply["layers"]:
            raise BackendError("rknn-toolkit2 printed no per-layer table", "see rknn_build.log in the bundle")
        placement = placement_of(reply["layers"], job.model)
        cycles = sum(layer["cycles"] for layer in reply["layers"])
        unestimated = sum(1 for r in placement["layers"] if r["cycles"] == 0)
        estimate = {
            "latency_ms": cycles / (options.npu_clock_mhz * 1e3),
            "source": "rknn-estimate",
            "cycles": cycles,
            "npu_clock_mhz": options.npu_clock_mhz,
            "npu_share_pct": placement["npu_share_pct"],
            **reply["memory"],
            "note": f"sum of the compiler's per-layer cycles at {options.npu_clock_mhz:g} MHz; "
            f"{unestimated} of {len(placement['layers'])} layers carry no cycle figure "
            "(CPU layers, fused attention/norm) so this is a lower bound",
        }
        shutil.copyfile(Path(__file__).with_name("rknn_files") / RUNNER, job.out_dir / RUNNER)
        details = {
            "estimate": estimate,
            "placement": placement,
            "simulated": {"outputs": SIMULATED, "source": "rknn-toolkit2 simulator (model.rknn's graph)"},
            "rknn": {
                "target_platform": options.target_platform,
                "opset": request["opset"],
                "mean_values": request["mean_values"][0],
                "std_values": request["std_values"][0],
                "input": "uint8 pixels (mean/std in the .rknn)" if request["to_pixels"] else "the model's float input",
                "calibration": calib_info,
                "timings_s": reply["timings_s"],
                **({"int8": _int8_record(reply, placement)} if job.precision == "int8" else {}),
            },
        }
        files = (RKNN_FILE, ONNX_FILE, "rknn_build.log", "rknn_worker.log", SIMULATED, RUNNER)
        return Artifact(self.name, job.precision, RKNN_FILE, files, details=tuple(details.items()))

    def analyze_layers(self, job: CompileJob, artifact: Artifact, sample: int = 0) -> dict | None:
        """`vdeploy debug`: the build again at the requested hybrid level (the plain INT8 build, before any
        fallback), then rknn-toolkit2's accuracy_analysis on one validation sample -> {"source", "sample",
        "hybrid_level", "artifact_hybrid_level", "layers": [{name, op, onnx_node, cos_entire, cos_single, euc_*}]}
        in the compiler's execution order."""
        options: RknnOptions = job.options
        kept = ((artifact.detail("rknn") or {}).get("int8") or {}).get("hybrid_level", options.hybrid_level)
        with tempfile.TemporaryDirectory(prefix="vdeploy-rknn-analyze-") as tmp:
            work = Path(tmp)
            (work / "bundle").mkdir()
            request, _ = self._request(job, work, out_dir=work / "bundle")
            request.update(analyze=True, analyze_sample=sample)
            reply = _call_worker(request, options, job, work)
        nodes = {n.name: n.op_type for n in job.model.graph.node if n.name}
        values = {o: n.name for n in job.model.graph.node for o in n.output if n.name}
        rows = [{**row, "onnx_node": _analysis_node(row["name"], nodes, values)} for row in reply["analysis"]]
        return {
            "source": f"rknn-toolkit2 {self.version()} accuracy_analysis (simulator vs the toolkit's FP32 run)",
            "sample": sample,
            "hybrid_level": options.hybrid_level,
            "artifact_hybrid_level": kept,
            "layers": rows,
        }

    def _request(self, job: CompileJob, work: Path, out_dir: Path | None = None) -> tuple[dict, dict | None]:
        """The worker request shared by compile and analyze_layers (writes model.onnx and the sample files)."""
        import onnx

        if job.precision not in ("fp16", "int8"):
            raise BackendError(
                f"the RKNN NPU builds fp16 or int8 (asked for {job.precision})", "build with --precision fp16 or int8"
            )
        options: RknnOptions = job.options
        opset = max((o.version for o in job.model.opset_import if o.domain in ("", "ai.onnx")), default=0)
        if opset > 19:
            raise BackendError(
                f"rknn-toolkit2 2.5.0 accepts ONNX opset <= 19 (this graph is opset {opset})",
                "set `opset:` <= 19 for the target in targets.yaml",
            )
        out_dir = (out_dir or job.out_dir).resolve()  # the worker runs in a scratch folder
        arrays = [a.reshape(a.shape[0] * a.shape[1], *a.shape[2:]) for a in job.samples.values()]
        mean_px, std_px = scale_of(options, arrays[0].shape[1] if arrays and arrays[0].ndim == 4 else 1)
        to_pixels = options.mean is not None or options.std is not None
        onnx.save(job.model, str(out_dir / ONNX_FILE))
        request = {
            "onnx": str(out_dir / ONNX_FILE),
            "out_dir": str(out_dir),
            "work_dir": str(work),
            "target_platform": options.target_platform,
            "precision": job.precision,
            "mean_values": [mean_px],
            "std_values": [std_px],
            "rknn_file": RKNN_FILE,
            "simulated": SIMULATED,
            "optimization_level": options.optimization_level,
            "hybrid_level": options.hybrid_level,
            "samples": str(_npz(arrays, work / "samples.npz", to_pixels, mean_px, std_px)),
            "opset": opset,
            "to_pixels": to_pixels,
        }
        calib_info = None
        if job.precision == "int8":
            if job.calibration is None:
                raise BackendError("the RKNN int8 build needs calibration data", "pass --calib")
            calibration = job.calibration()
            request["calibration"] = str(
                _npz(list(calibration.inputs.values()), work / "calibration.npz", to_pixels, mean_px, std_px)
            )
            calib_info = {
                "samples": len(calibration),
                "source": calibration.source,
                "preprocessing": calibration.preprocessing,
            }
        return request, calib_info

    def open(self, artifact: Artifact, bundle_dir: Path):
        from vdeploy.backends.onnxruntime import OnnxRuntimeSession

        return OnnxRuntimeSession(bundle_dir / ONNX_FILE)

    def host_latency_reason(self, artifact: Artifact) -> str | None:
        platform = (artifact.detail("rknn") or {}).get("target_platform", "RKNN")
        return (
            f"the {platform} NPU is not on this host: latency is rknn-toolkit2's cycle estimate; numerics come "
            "from its simulator (run_rknn.py times it on the board)"
        )


def _call_worker(request: dict, options: RknnOptions, job: CompileJob, work: Path) -> dict:
    """One request to the rknn-toolkit2 worker in its venv; its log goes to WORK/rknn_worker.log."""
    timeout, log = options.timeout_s, work / "rknn_worker.log"
    return toolchains().call(TOOLCHAIN, "rknn_worker", request, timeout_s=timeout, progress=job.progress, log=log)


def _reference(job: CompileJob, path: Path) -> Path:
    """The FP32 legal graph's outputs on the validation samples (ONNX Runtime), stacked: what the worker judges the
    INT8 simulator against before choosing a hybrid level."""
    import onnxruntime as ort

    session = ort.InferenceSession(job.model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    count = next(iter(job.samples.values())).shape[0]
    runs = [session.run(None, dict(zip(names, (a[i] for a in job.samples.values())))) for i in range(count)]
    np.savez(path, **{f"in{k}": np.stack([r[k] for r in runs]) for k in range(len(runs[0]))})
    return path


def _int8_record(reply: dict, placement: dict) -> dict:
    """How the INT8 build was chosen: each attempt's worst-sample cosine vs the FP32 graph, the level kept, and how
    many of the compiler's layers it left in float16."""
    dtypes: dict[str, int] = {}
    for row in placement["layers"]:
        dtypes[row["dtype"]] = dtypes.get(row["dtype"], 0) + 1
    return {
        "hybrid_level": reply.get("hybrid_level", 0),
        "attempts": reply.get("attempts", []),
        "judged_against": "the FP32 legal graph in ONNX Runtime (the manifest's numerics are against PyTorch)",
        "layer_dtypes": dict(sorted(dtypes.items())),
    }


def _analysis_node(name: str, nodes: dict[str, str], values: dict[str, str]) -> str | None:
    """The ONNX node an accuracy_analysis row belongs to: its name is the compiler's tensor name, which starts with
    an ONNX node name or an ONNX value name (then that value's producer), plus the compiler's suffixes."""
    node = onnx_node_for(name, nodes)
    if node:
        return node
    value = onnx_node_for(name, dict.fromkeys(values, ""))
    return values.get(value) if value else None


def _npz(arrays, path: Path, to_pixels: bool, mean_px, std_px) -> Path:
    """Arrays [N, C, H, W] as the worker reads them; with --mean/--std, un-normalized back to pixel units."""
    out = {}
    for i, a in enumerate(arrays):
        a = np.ascontiguousarray(a, dtype=np.float32)
        if to_pixels and a.ndim == 4:
            a = (
                a * np.asarray(std_px, np.float32)[None, :, None, None]
                + np.asarray(mean_px, np.float32)[None, :, None, None]
            )
        out[f"in{i}"] = a
    np.savez(path, **out)
    return path
