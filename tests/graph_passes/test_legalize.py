"""Legalization end to end: every op profile in targets.yaml x exported models; post-condition, stamps, numerics."""

from __future__ import annotations

import functools
import io
import warnings

import onnx
import onnx_ir as ir
import pytest
import torch
import torch.nn.functional as F
from onnx_ir.passes import PostconditionError
from torch import nn

from tests.models import GOLDEN, example_input
from vdeploy.errors import UnsupportedOpsError
from vdeploy.graph_passes.legalize import Legalize, all_nodes, legalize, op_census, usable_ops
from vdeploy.graph_passes.rules.base import RULE_KEY
from vdeploy.targets import OpId, load_catalog

from .helpers import FP32_GATE_REL, ORT_OPS, build, op_types, random_feeds, rel_err, run, without

CATALOG = load_catalog()
PROFILES = sorted(CATALOG.data.op_profiles)  # whatever targets.yaml holds today
CONV_ONLY_NPU = without("MatMul", "Gemm", "LayerNormalization", "Softmax", "Erf", "Gelu", "BatchNormalization")


class HandWritten(nn.Module):
    """LayerNorm, tanh-GELU and Softmax spelled out by hand, as some model code does."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.w = nn.Parameter(1 + 0.2 * torch.randn(16))
        self.b = nn.Parameter(0.1 * torch.randn(16))
        self.fc = nn.Linear(16, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(-1, keepdim=True)
        v = (x - u).pow(2).mean(-1, keepdim=True)
        x = (x - u) / torch.sqrt(v + 1e-6) * self.w + self.b
        h = self.fc(x)
        h = F.gelu(h, approximate="tanh") + F.gelu(h)
        e = torch.exp(h - h.amax(-1, keepdim=True))
        return e / e.sum(-1, keepdim=True)


MODELS = [
    f"{name}-{exporter}"
    for name in (*GOLDEN, "handwritten")
    if name != "vit_sdpa"
    for exporter in ("dynamo18", "legacy17")
] + ["cnn-legacy17bn", "mobilevit-legacy17bn"]


@functools.cache
def exported(key: str) -> onnx.ModelProto:
    """dynamo18: torch.onnx.export(dynamo=True, opset 18); legacy17: dynamo=False, opset 17; legacy17bn: the same
    without constant folding, so BatchNorm reaches the graph and the Conv+BN fold runs on a real export."""
    name, exporter = key.split("-")
    if name == "handwritten":
        module, x = HandWritten().eval(), torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(0))
    else:
        build_fn, shape = GOLDEN[name]
        module, x = build_fn(), example_input(shape)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "dynamo18":
            return torch.onnx.export(module, (x,), dynamo=True, opset_version=18, verbose=False).model_proto
        buffer = io.BytesIO()
        torch.onnx.export(
            module, (x,), buffer, dynamo=False, opset_version=17, do_constant_folding=exporter != "legacy17bn"
        )
        return onnx.load_from_string(buffer.getvalue())


def tolerance(result) -> float:
    """The FP32 gate, widened only for documented approximations (10x their max error, relative to the output)."""
    return max([FP32_GATE_REL, *(10 * e for e in result.approximations.values())])


def legalize_proto(model: onnx.ModelProto, op_set: frozenset, fallback: bool = True):
    ir_model = ir.from_proto(model)
    step = Legalize(op_set, fallback=fallback)
    step(ir_model)
    return ir_model, step.result


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("model_name", MODELS)
def test_every_profile_every_model(profile, model_name):
    model = exported(model_name)
    op_set = CATALOG.op_set(profile)
    ir_model, result = legalize_proto(model, op_set)
    usable = usable_ops(op_set, ir_model.opset_imports)
    left = {str(op) for op in op_census(ir_model) if op not in usable}
    assert set(result.unsupported) == left  # the post-condition's own census, re-taken from the graph
    assert not any(op.domain == "vdeploy.internal" for op in op_census(ir_model))
    out = ir.to_proto(ir_model)
    onnx.checker.check_model(out)
    feeds = random_feeds(model)
    assert rel_err(run(model, feeds), run(out, feeds)) <= tolerance(result)


@pytest.mark.parametrize("model_name", MODELS)
def test_conv_only_npu_keeps_only_attention_matmuls(model_name):
    model = exported(model_name)
    ir_model, result = legalize_proto(model, CONV_ONLY_NPU)
    assert set(result.unsupported) <= {"MatMul"}  # attention's two computed operands: the attention family's job
    if model_name.startswith(("cnn", "handwritten")):
        assert result.unsupported == ()
    if model_name == "cnn-legacy17bn":
        assert result.rules["conv_bn_folding"] == 6
    assert {"LayerNormalization", "Softmax", "Erf", "Gemm", "BatchNormalization"}.isdisjoint(
        op_types(ir.to_proto(ir_model))
    )
    feeds = random_feeds(model)
    assert rel_err(run(model, feeds), run(ir.to_proto(ir_model), feeds)) <= tolerance(result)


def test_handwritten_export_fuses_on_onnxruntime():
    model = exported("handwritten-legacy17")
    ir_model, result = legalize_proto(model, ORT_OPS)
    assert result.rules == {
        "layer_norm_fusion": 1,
        "layer_norm_scale_fusion": 1,
        "layer_norm_bias_fusion": 1,
        "softmax_fusion": 1,
    }
    assert result.fused == {"layer_norm": 3, "softmax": 1}
    assert set(result.rule_directions.values()) == {"fused"}
    assert op_types(ir.to_proto(ir_model)).count("LayerNormalization") == 1


def test_every_created_node_carries_its_rule_name():
    model = exported("vit-dynamo18")
    before = {n.name for n in model.graph.node}
    ir_model, result = legalize_proto(model, CONV_ONLY_NPU)
    stamped = [n for n in all_nodes(ir_model) if RULE_KEY in n.metadata_props]
    # a rule whose nodes a later rule rewrote again (attention's internal op) leaves no stamp of its own
    assert stamped and {n.metadata_props[RULE_KEY] for n in stamped} <= set(result.rules)
    assert {"layer_norm_decomposition", "gelu_erf_to_tanh_approx", "linear_to_conv"} <= {
        n.metadata_props[RULE_KEY] for n in stamped
    }
    unstamped_new = [n for n in all_nodes(ir_model) if RULE_KEY not in n.metadata_props and n.name not in before]
    assert not unstamped_new


@pytest.mark.parametrize("target", CATALOG.names)
def test_postcondition_raises_exactly_when_ops_are_left_without_fallback(target):
    spec = CATALOG.get(target)
    ir_model = ir.from_proto(exported("vit-dynamo18"))
    step = Legalize(spec.op_set, fallback=spec.spec.fallback)
    if spec.spec.fallback:
        step(ir_model)  # leftovers allowed: must not raise
        assert step.result.legal
        return
    ir_model2 = ir.from_proto(exported("vit-dynamo18"))
    left = legalize(ir_model2, spec.op_set).unsupported
    if left:
        with pytest.raises(PostconditionError) as info:
            step(ir_model)
        assert isinstance(info.value.__cause__, UnsupportedOpsError)
    else:
        step(ir_model)


def test_internal_op_fails_the_postcondition_even_with_fallback():
    model = onnx.parser.parse_model("""<ir_version: 10, opset_import: ["" : 18, "vdeploy.internal" : 1]>
g (float[2,4] x) => (float[2,4] y) {
  y = vdeploy.internal.Attention(x)
}""")
    ir_model = ir.from_proto(model)
    with pytest.raises(PostconditionError) as info:
        Legalize(ORT_OPS, fallback=True)(ir_model)
    assert "internal ops survived" in str(info.value.__cause__)


def test_gelu_is_usable_only_from_opset_20():
    assert OpId("", "Gelu") not in usable_ops(ORT_OPS, {"": 18})
    assert OpId("", "Gelu") in usable_ops(ORT_OPS, {"": 20})
    assert OpId("", "LayerNormalization") not in usable_ops(ORT_OPS, {"": 16})
    assert OpId("com.microsoft", "Gelu") in usable_ops(ORT_OPS, {"": 14})


def test_gelu_from_opset_20_export_decomposes_for_targets_without_it():
    module = HandWritten().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torch.onnx.export(
            module, (torch.randn(2, 5, 16),), dynamo=True, opset_version=20, verbose=False
        ).model_proto
    assert op_types(model).count("Gelu") == 2
    ir_model, result = legalize_proto(model, without("Gelu"))
    assert result.rules["gelu_decomposition"] == 1 and result.rules["gelu_tanh_decomposition"] == 1
    feeds = random_feeds(model)
    assert rel_err(run(model, feeds), run(ir.to_proto(ir_model), feeds)) <= FP32_GATE_REL


def test_constants_become_initializers_when_the_target_has_no_constant():
    model = build("g (float[2,6] x) => (float[2,6] y) {\n y = Softmax <axis=-1> (x)\n}")
    ir_model, result = legalize_proto(model, without("Softmax", "Constant"), fallback=False)
    out = ir.to_proto(ir_model)
    assert "Constant" not in op_types(out, constants=True) and result.unsupported == ()
    feeds = random_feeds(model)
    assert rel_err(run(model, feeds), run(out, feeds)) <= 1e-6


def test_identity_nodes_dropped_when_the_target_has_no_identity():
    model = build("g (float[2,6] x) => (float[2,6] y) {\n i = Identity(x)\n y = Relu(i)\n}")
    ir_model, result = legalize_proto(model, without("Identity"), fallback=False)
    assert op_types(ir.to_proto(ir_model)) == ["Relu"] and result.unsupported == ()


def test_pass_reports_modified_and_is_idempotent():
    ir_model = ir.from_proto(exported("cnn-legacy17"))
    first = Legalize(CONV_ONLY_NPU)(ir_model)
    assert first.modified
    second = Legalize(CONV_ONLY_NPU)
    assert not second(ir_model).modified and second.result.rules == {}


def test_result_lists_leftovers_and_fallback():
    model = build("g (float[2,6] x) => (float[2,6] y) {\n y = Softmax <axis=-1> (x)\n}")
    no_exp = without("Softmax", "Exp")
    strict = legalize(ir.from_proto(model), no_exp, fallback=False)
    assert strict.unsupported == ("Exp",) and not strict.legal
    lenient = legalize(ir.from_proto(model), no_exp, fallback=True)
    assert lenient.unsupported == ("Exp",) and lenient.legal
