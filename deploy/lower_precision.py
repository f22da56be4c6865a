"""The precision stage of a build: the legal FP32 graph -> the graph the backend compiles at the asked precision.

fp32 -> unchanged · fp16 -> FP16 with FP32 islands (strongly typed, Casts at the borders) · bf16 -> FP32 graph, bf16
inference after a child-process probe of this CPU · int8 -> calibrated PTQ (OpenVINO: NNCF; others: Q/DQ ONNX)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vdeploy.errors import BackendError


@dataclass(frozen=True)
class Lowered:
    model: object  # onnx.ModelProto, or an openvino.Model for OpenVINO INT8
    run_env: dict = field(default_factory=dict)  # environment the artifact must run under (an ISA cap)
    info: dict = field(default_factory=dict)  # manifest "precision_info"
    warning: str | None = None  # e.g. calibration on random data
    calibration: object = None  # CalibrationData, handed to toolchains that quantize themselves (Int8Form.toolchain)
    float_layers: tuple[str, ...] = ()  # node names kept in higher precision, for those toolchains


def lower_precision(model, target, precision: str, request, progress, recorded_mean_std=None) -> Lowered:
    """`recorded_mean_std`: the model's own image preprocessing (timm records it), used for --calib folders unless
    --mean/--std are given."""
    if precision == "fp32":
        return Lowered(model)
    if precision == "fp16" and _vendor_lowers(target):  # e.g. rknn-toolkit2 builds FP16 from the FP32 graph
        return Lowered(model, info={"fp16": "converted by the vendor compiler from the FP32 graph"})
    if precision == "fp16":
        return _fp16(model, target)
    if precision == "bf16":
        return _probed(model, "bf16", progress)
    return _int8(model, target, request, progress, recorded_mean_std)


def _vendor_lowers(target) -> bool:
    from vdeploy.backends.base import Int8Form
    from vdeploy.int8 import form_for_backend

    return form_for_backend(target.backend) is Int8Form.toolchain


def _fp16(model, target) -> Lowered:
    import onnx_ir as ir

    from vdeploy.graph_passes.precision import DEFAULT_KEEP_FP32, to_fp16

    keep = frozenset(target.spec.precision_options.keep_fp32) or DEFAULT_KEEP_FP32
    result = to_fp16(ir.serde.deserialize_model(model), keep)
    info = {"keep_fp32": sorted(keep), "fp32_nodes": len(result.fp32_nodes), "casts": result.casts_inserted}
    return Lowered(ir.serde.serialize_model(result.model), info=info)


def _probed(model, precision: str, progress) -> Lowered:
    """Probe the CPU in a child process (the AMX SIGILL trap) and run under the ISA cap that worked."""
    from vdeploy.cpu_features import probe

    progress(f"probing {precision} support on this CPU (child process)")
    support = probe(precision)
    if not support.ok:
        raise BackendError(
            f"this CPU cannot run {precision} inference here: {support.reason}",
            "build with --precision fp32 (or int8/fp16 where the target offers it)",
        )
    return Lowered(model, support.env(), {f"{precision}_probe": support.to_dict()})


def _int8(model, target, request, progress, recorded_mean_std) -> Lowered:
    """The machinery is vdeploy.int8.quantize_int8; the backend names its INT8 form (BackendBase.int8_form)."""
    from vdeploy.backends.base import Int8Form
    from vdeploy.calibration import input_shapes, load_calibration
    from vdeploy.int8 import Gate, Int8Options, form_for_backend, parse_sensitive, quantize_int8
    from vdeploy.quantize import Placement

    options = target.spec.precision_options
    calib = load_calibration(
        request.calib, input_shapes(model), preprocessing=preprocessing_for(request, recorded_mean_std)
    )
    placement = Placement.for_target(options.int8_everywhere).keep_float(options.int8_keep_float)
    tolerance = request.tolerance_for(target, "int8")
    form = form_for_backend(target.backend)
    if form is Int8Form.toolchain:  # the vendor compiler quantizes from the calibration set: the graph stays FP32
        return Lowered(
            model,
            info={"calibration": calib.to_dict(), "placement": placement.to_dict()},
            warning=calib.warning,
            calibration=calib,
            float_layers=placement.float_nodes(model),
        )
    run_env, probe_info = {}, {}
    if form is Int8Form.nncf_openvino:
        probed = _probed(model, "int8", progress)
        run_env, probe_info = probed.run_env, probed.info
    ranges, qat_info = _qat_ranges(request.model, model, form)
    progress(
        f"quantizing to INT8 ({form.value}, {placement.kind.value}, up to {len(calib)} calibration samples: "
        f"{calib.source})"
    )
    quantized, info = quantize_int8(
        model,
        calib,
        form,
        placement,
        Gate(tolerance.min_cosine, tolerance.max_rel_err, tolerance.min_top1_agreement),
        progress,
        Int8Options(sensitive=parse_sensitive(request.int8_sensitive), run_env=run_env or None, learned_ranges=ranges),
    )
    return Lowered(
        quantized, run_env, {"calibration": calib.to_dict(), **info, **qat_info, **probe_info}, calib.warning
    )


def _qat_ranges(model_path, model, form):
    """Learned ranges of a vdeploy.qat model (.pt2 with vdeploy_qat.json): used as-is by the Q/DQ forms."""
    from vdeploy.backends.base import Int8Form
    from vdeploy.qat import learned_ranges, read_record

    record = read_record(model_path) if str(model_path).endswith(".pt2") else None
    if not record:
        return None, {}
    ranges = learned_ranges(model, record)
    applied = form is not Int8Form.nncf_openvino
    return (ranges if applied else None), {
        "qat": {
            "form_trained": record.get("form"),
            "layers_recorded": len(record.get("ranges", [])),
            "tensors_matched": len(ranges),
            "applied": applied,
            "note": "learned ranges replace calibration for these tensors"
            if applied
            else "NNCF form re-calibrates (learned ranges apply to the Q/DQ forms)",
        }
    }


def preprocessing_for(request, recorded_mean_std):
    """Image preprocessing for --calib folders: --mean/--std, else what the model records, else ImageNet's."""
    from vdeploy.calibration import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

    if request.mean or request.std:
        return Preprocessing(request.mean or IMAGENET_MEAN, request.std or IMAGENET_STD, source="--mean/--std")
    if recorded_mean_std:
        return Preprocessing(*recorded_mean_std, source="recorded with the model")
    return None  # ImageNet defaults, named as such in the manifest
