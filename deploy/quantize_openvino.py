"""INT8 for OpenVINO through NNCF, with the placement of quantize.py as NNCF's ignored scope.

onnx.ModelProto | ov.Model + CalibrationData + Placement -> nncf.quantize(model_type=TRANSFORMER when the model has
transformer ops, ignored_scope = float-sensitive ops, residual Adds, kept-float layers) -> INT8 ov.Model
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path

from vdeploy.calibration import CalibrationData
from vdeploy.quantize import Placement, PlacementKind, QuantizeError

# OpenVINO op types (after conversion from ONNX) of the float-sensitive ops, for NNCF's ignored scope.
OV_FLOAT_TYPES = ("MVN", "NormalizeL2", "SoftMax", "Softmax", "LogSoftmax", "Gelu", "Erf")
TRANSFORMER_OV_TYPES = frozenset({"MVN", "SoftMax", "Softmax", "ScaledDotProductAttention", "Gelu"})


def quantize_openvino(
    model,
    calib: CalibrationData,
    placement: Placement = Placement(),
    *,
    subset_size: int = 300,
    smooth_alpha: float = 0.95,
):
    """An INT8 ov.Model from `model` (onnx.ModelProto or ov.Model) via NNCF. Transformer-aware: an ignored scope
    of the float-sensitive ops and residual Adds, and model_type TRANSFORMER, when the model has transformer ops
    (MVN, Softmax, SDPA, Gelu; a pure CNN keeps NNCF's CNN defaults); naive: NNCF's defaults, nothing ignored.
    smooth_alpha: NNCF's SmoothQuant alpha for MatMul in transformer mode (0.95, NNCF's default; < 0 disables)."""
    import nncf
    import openvino as ov

    if not isinstance(model, ov.Model):
        model = onnx_to_ov(model)
    aware = placement.kind is PlacementKind.transformer_aware and _has_transformer_ops(model)
    residual = aware if placement.float_residual_adds is None else placement.float_residual_adds
    names = _ov_float_names(model, placement, placement.keep_float_nodes - placement.force_int8_nodes, residual)
    ignored = nncf.IgnoredScope(names=sorted(names), validate=False) if names else None
    input_name = model.inputs[0].get_any_name()
    batch = model.inputs[0].get_partial_shape()[0]
    batch_size = batch.get_length() if batch.is_static else 1  # NNCF's statistics expect one sample per item
    items = [feed[input_name] if len(feed) == 1 else feed for feed in calib.batches(batch_size)]
    try:
        with _quiet_nncf():
            return nncf.quantize(
                model,
                nncf.Dataset(items),
                subset_size=min(subset_size, len(items)),
                model_type=nncf.ModelType.TRANSFORMER if aware else None,
                ignored_scope=ignored,
                advanced_parameters=nncf.AdvancedQuantizationParameters(
                    smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=smooth_alpha)
                ),
            )
    except Exception as exc:
        raise QuantizeError(
            f"NNCF quantization failed: {type(exc).__name__}: {exc}"[:400],
            "check the calibration data matches the model inputs",
        ) from None


@contextlib.contextmanager
def _quiet_nncf():
    """NNCF logs INFO lines to stdout and draws progress bars there; --json needs stdout clean."""
    from nncf.common.logging import nncf_logger

    level = nncf_logger.level
    nncf_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        nncf_logger.setLevel(level)


def _has_transformer_ops(ov_model) -> bool:
    return any(op.get_type_name() in TRANSFORMER_OV_TYPES for op in ov_model.get_ordered_ops())


def onnx_to_ov(model):
    import onnx
    import openvino as ov

    from vdeploy.backends.openvino import canonical_names

    with tempfile.TemporaryDirectory(prefix="vdeploy-ov-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(model, str(path))
        ov_model = ov.convert_model(str(path))
    canonical_names(ov_model, frozenset(n.name for n in model.graph.node))  # NNCF records names in rt_info
    return ov_model


def _ov_float_names(ov_model, placement: Placement, onnx_names: Iterable[str], residual_adds: bool) -> set[str]:
    """OpenVINO op names to ignore: the float-sensitive op types and residual Adds (transformer-aware), plus ops
    named after the ONNX nodes of the overrides (the converter keeps ONNX names, or `name/...` for parts)."""
    wanted = set(onnx_names)
    names = set()
    for op in ov_model.get_ordered_ops():
        name, kind = op.get_friendly_name(), op.get_type_name()
        if name in placement.force_int8_nodes:
            continue
        if wanted and (name in wanted or name.split("/WithoutBiases")[0] in wanted):
            names.add(name)
        elif placement.kind is PlacementKind.transformer_aware and (
            kind in OV_FLOAT_TYPES or (residual_adds and kind == "Add" and _ov_residual_add(op))
        ):
            names.add(name)
    return names


def _ov_residual_add(op) -> bool:
    return all(i.get_source_output().get_node().get_type_name() != "Constant" for i in op.inputs())
