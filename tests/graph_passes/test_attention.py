"""Attention: every exporter shape normalises to one internal op; each lowering keeps the numbers.

Small graphs built in code (attention_graphs.py) for each rule, positive and negative; then real exporters (timm
deit_tiny, hand-built blocks, the golden models) through dynamo (opset 18) and the legacy exporter (opset 17).
Numerics: ONNX Runtime with every optimisation off, lowered model vs the un-rewritten one, FP32.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from onnxscript.rewriter.pattern import RewriteRuleSet

from tests.graph_passes.attention_graphs import (
    BIAS_FORMS,
    EXPORTERS,
    KEY_FORMS,
    SCALE_FORMS,
    attention_model,
    export_canonical,
    feeds_for,
    max_error,
    op_list,
    run_ort,
)
from tests.models import GOLDEN, example_input
from vdeploy.graph_passes.legalize import all_nodes, legalize
from vdeploy.graph_passes.rules import ALL_SPECS
from vdeploy.graph_passes.rules.attention import (
    ATTENTION,
    ATTENTION_NORMALIZE,
    ATTENTION_SPECS,
    ONNX_ATTENTION,
    ORT_MHA,
)
from vdeploy.graph_passes.rules.attention_lower import attention_to_onnx_attention
from vdeploy.graph_passes.rules.attention_onnx import attention_from_onnx_attention
from vdeploy.graph_passes.rules.base import INTERNAL_DOMAIN, RULE_KEY, Direction
from vdeploy.targets import load_catalog
from vdeploy.timm_compat import import_timm

TOL = 1e-5  # max abs error / max |output| on these small graphs (measured: <= 5e-7)
INTERNAL = f"{INTERNAL_DOMAIN}::Attention"
MHA = "com.microsoft::MultiHeadAttention"
LOWERINGS = {  # name -> (op set, model opset, the op the attention becomes)
    "onnx_attention": (frozenset({ONNX_ATTENTION}), 23, "Attention"),
    "ort_mha": (frozenset({ORT_MHA}), 18, MHA),
    "decomposed": (frozenset(), 18, "Softmax"),
}
ATTENTION_RULES = {
    rule.name
    for spec in ATTENTION_SPECS
    for op_set in (frozenset(), frozenset({ONNX_ATTENTION, ORT_MHA}))
    for rule in spec.choose(op_set)[1]
}


def normalised(proto: onnx.ModelProto, op_set: frozenset = frozenset()):
    model = ir.from_proto(proto)
    return model, legalize(model, op_set, specs=(ATTENTION_NORMALIZE,))


def lowered(proto: onnx.ModelProto, op_set: frozenset):
    model = ir.from_proto(proto)
    return model, legalize(model, op_set, specs=ATTENTION_SPECS)


def assert_same_outputs(proto: onnx.ModelProto, model: ir.Model, tol: float = TOL) -> float:
    feeds = feeds_for(proto)
    error, scale = max_error(run_ort(model, feeds)[0], run_ort(proto, feeds)[0])
    assert error <= tol * scale, f"max abs error {error:.3g} > {tol} x output scale {scale:.3g}"
    return error / scale


# ---- normalisation: each exporter shape -> exactly one internal op ---------------------------------------------

SHAPES = (
    [dict(scale=s) for s in SCALE_FORMS]
    + [dict(key=k) for k in KEY_FORMS[1:]]
    + [dict(bias=b) for b in BIAS_FORMS[1:]]
    + [dict(bias="window", batch=4), dict(scale="sqrt_both", key="flat5d", bias="mask2d")]
)
SHAPE_IDS = ["-".join(f"{v}" for v in s.values()) + ("-b4" if s.get("batch") == 4 else "") for s in SHAPES]


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_exporter_shape_normalises_to_one_internal_op(shape):
    model, result = normalised(attention_model(**shape))
    ops = op_list(model)
    assert ops[INTERNAL] == 1 and not ops["Softmax"] and not ops["MatMul"], ops
    assert result.rules["attention_from_matmul_softmax"] == 1
    expected_helpers = {
        "window": "attention_window_mask_to_bias",
        "two": "attention_merge_score_biases",
        "flat": "attention_flat_key_transpose_to_4d",
        "flat5d": "attention_flat_key_transpose_to_4d",
    }
    for form in (shape.get("bias"), shape.get("key")):
        if form in expected_helpers:
            assert result.rules[expected_helpers[form]] >= 1, result.rules
    node = next(n for n in model.graph if n.domain == INTERNAL_DOMAIN)
    expected_scale = 1.0 if shape.get("scale") == "none" else 0.5
    assert node.attributes["scale"].as_float() == pytest.approx(expected_scale, rel=1e-6)
    assert len(node.inputs) == (3 if shape.get("bias") is None else 4)


@pytest.mark.parametrize(
    "case",
    [
        dict(axis=2),  # Softmax over a non-last axis is not attention
        dict(probs_output=True),  # the attention map is also a graph output: the chain cannot be removed
        dict(scale_input=True, scale="scores_mul"),  # scale not a constant
        dict(bias="add", bias_batch=3, batch=1),  # the bias would enlarge the scores ([1,..] + [3,..])
    ],
    ids=["softmax-axis-2", "probs-used-twice", "scale-not-constant", "bias-enlarges-scores"],
)
def test_non_attention_is_left_alone(case):
    proto = attention_model(**case)
    model, result = normalised(proto)
    assert not result.rules, result.rules
    assert op_list(model) == op_list(ir.from_proto(proto))


def test_rank3_attention_is_left_alone():
    """[B*H, S, D] attention (no head axis) is not the internal op's rank-4 form."""
    q = helper.make_tensor_value_info("q", TensorProto.FLOAT, [6, 5, 4])
    nodes = [
        helper.make_node("Transpose", ["q"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Softmax", ["s"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "q"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [q], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model, result = normalised(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10))
    assert not result.rules and op_list(model)["Softmax"] == 1


def test_window_mask_with_unknown_batch_is_left_alone():
    """The shift-mask rewrite needs static shapes (it computes the bias layout); nothing else matches the Reshapes."""
    model, result = normalised(attention_model(bias="window", batch="B"))
    assert not result.rules and op_list(model)["Softmax"] == 1


# ---- lowerings: op list and numerics -----------------------------------------------------------------------------

EXACT_OPS = {  # q_mul / transpose / rel-pos bias [1,H,S,S]: the whole graph after lowering
    "onnx_attention": {"Attention": 1},
    "ort_mha": {"Transpose": 4, "Reshape": 4, MHA: 1},
    "decomposed": {"Mul": 1, "Transpose": 1, "MatMul": 2, "Add": 1, "Softmax": 1},
}


@pytest.mark.parametrize("lowering", LOWERINGS)
def test_lowering_op_list(lowering):
    op_set, opset, _ = LOWERINGS[lowering]
    model, result = lowered(attention_model(bias="add", opset=opset), op_set)
    assert dict(op_list(model)) == EXACT_OPS[lowering]
    assert result.choices["attention"] == (Direction.decomposed if lowering == "decomposed" else Direction.fused)
    created = [n for n in all_nodes(model) if RULE_KEY in n.metadata_props]
    assert created and all(n.metadata_props[RULE_KEY] in ATTENTION_RULES for n in created)


@pytest.mark.parametrize("lowering", LOWERINGS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_lowering_numerics(shape, lowering):
    op_set, opset, becomes = LOWERINGS[lowering]
    proto = attention_model(**shape, opset=opset)
    model, result = lowered(proto, op_set)
    ops = op_list(model)
    assert ops[becomes] == 1 and not any(op.startswith(INTERNAL_DOMAIN) for op in ops), ops
    assert_same_outputs(proto, model)


def test_onnx_attention_lowering_declines_below_opset_23():
    """Even when asked directly (no driver filtering), the rule checks the model's opset import."""
    model, _ = normalised(attention_model(opset=18))
    assert RewriteRuleSet([attention_to_onnx_attention]).apply_to_model(model) == 0
    model, result = lowered(attention_model(opset=18), frozenset({ONNX_ATTENTION}))
    assert result.rules.get("attention_to_matmul_softmax") == 1 and op_list(model)["Softmax"] == 1


def test_mha_lowering_runs_fp16():
    proto = attention_model(bias="mask2d", dtype=TensorProto.FLOAT16)
    model, result = lowered(proto, frozenset({ORT_MHA}))
    assert result.rules["attention_to_ort_mha"] == 1
    assert_same_outputs(proto, model, tol=1e-3)  # FP16 (measured: 0)


def test_mha_lowering_declines_double_and_decomposition_takes_it():
    proto = attention_model(dtype=TensorProto.DOUBLE)
    model, result = lowered(proto, frozenset({ORT_MHA}))
    assert "attention_to_ort_mha" not in result.rules and result.rules["attention_to_matmul_softmax"] == 1
    assert_same_outputs(proto, model)


# ---- ONNX Attention (opset 23) in the model: normalised for targets without it; round trip ------------------------


def _onnx_attention_model(**attrs) -> onnx.ModelProto:
    proto = attention_model(bias="add", opset=23)
    model, _ = lowered(proto, frozenset({ONNX_ATTENTION}))
    for node in model.graph:
        for name, value in attrs.items():
            node.attributes[name] = ir.AttrInt64(name, value)
    return ir.to_proto(model)


def test_decompose_of_fused_matches_original():
    """decompose(fuse(m)) ~ m: MatMul form -> ONNX Attention -> internal -> MatMul/Softmax/MatMul."""
    original = attention_model(bias="add", opset=23)
    fused = _onnx_attention_model()
    model, result = lowered(fused, frozenset())
    assert result.rules["attention_from_onnx_attention"] == 1 and result.rules["attention_to_matmul_softmax"] == 1
    assert op_list(model)["Attention"] == 0 and op_list(model)["Softmax"] == 1
    assert_same_outputs(original, model)


def test_causal_onnx_attention_is_decomposed():
    """is_causal becomes a constant causal bias; numerics against ONNX Runtime running the original Attention."""
    proto = _onnx_attention_model(is_causal=1)
    model, result = lowered(proto, frozenset())
    assert result.rules["attention_from_onnx_attention"] == 1 and op_list(model)["Attention"] == 0
    assert_same_outputs(proto, model)


def test_grouped_query_onnx_attention_is_decomposed():
    """4-D ONNX Attention with fewer k/v heads than q heads: k/v heads repeated (np.repeat order)."""
    shapes = {"q": [1, 4, 5, 8], "k": [1, 2, 5, 8], "v": [1, 2, 5, 8]}
    graph = helper.make_graph(
        [helper.make_node("Attention", ["q", "k", "v"], ["y"], softcap=2.0)],
        "gqa",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in shapes.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)], ir_version=10)
    model, result = lowered(proto, frozenset())
    assert result.rules["attention_from_onnx_attention"] == 1 and op_list(model)["Attention"] == 0
    assert op_list(model)["Tanh"] == 1  # the softcap
    assert_same_outputs(proto, model)


def test_target_with_attention_keeps_exported_attention():
    _, rules = ATTENTION_NORMALIZE.choose(frozenset({ONNX_ATTENTION}))
    assert attention_from_onnx_attention not in rules
    assert attention_from_onnx_attention in ATTENTION_NORMALIZE.choose(frozenset())[1]


# ---- specs against the catalogue ---------------------------------------------------------------------------------


def test_attention_specs_run_first_and_adjacent():
    assert ALL_SPECS[:2] == ATTENTION_SPECS


@pytest.mark.parametrize("profile", sorted(load_catalog().data.op_profiles))
def test_every_profile_leaves_nothing_internal(profile):
    op_set = load_catalog().op_set(profile)
    direction, rules = ATTENTION.choose(op_set)
    assert rules[-1].name == "attention_to_matmul_softmax"  # the last resort is always there
    assert direction == (Direction.fused if {ONNX_ATTENTION, ORT_MHA} & op_set else Direction.decomposed)
    proto = attention_model(bias="two")
    model, _ = lowered(proto, op_set)
    assert not any(n.domain == INTERNAL_DOMAIN for n in all_nodes(model))
    assert_same_outputs(proto, model)


# ---- real exporters ------------------------------------------------------------------------------------------------

REAL_TOL = 1e-4  # max abs error / max |output| on real models (measured: deit_tiny <= 1e-6)


class HandBlock(torch.nn.Module):
    """ViT attention written six ways: scale on scores (Mul, Div), on q, as sqrt on q and k^T, SDPA, SDPA + mask."""

    def __init__(self, form: str, dim: int = 32, heads: int = 4, tokens: int = 10) -> None:
        super().__init__()
        self.form, self.heads, self.head_dim = form, heads, dim // heads
        self.qkv, self.proj = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)
        self.register_buffer("mask", torch.linspace(-1.0, 1.0, tokens * tokens).reshape(tokens, tokens))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        s = self.head_dim**-0.5
        if self.form.startswith("sdpa"):
            mask = self.mask if self.form == "sdpa_mask" else None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            kt = k.transpose(-2, -1)
            scores = {
                "scores_mul": lambda: (q @ kt) * s,
                "scores_div": lambda: (q @ kt) / self.head_dim**0.5,
                "q_mul": lambda: (q * s) @ kt,
                "sqrt_both": lambda: (q * s**0.5) @ (kt * s**0.5),
            }[self.form]()
            out = scores.softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


@pytest.fixture(scope="module")
def deit_exports():
    timm = import_timm()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = timm.create_model("deit_tiny_patch16_224").eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    return {name: export_canonical(model, x, name) for name in EXPORTERS}


def test_deit_tiny_dynamo_and_legacy_normalise_to_12(deit_exports):
    counts = {name: op_list(normalised(proto)[0])[INTERNAL] for name, proto in deit_exports.items()}
    assert counts == {"dynamo": 12, "legacy": 12}


@pytest.mark.parametrize("lowering", ["ort_mha", "decomposed"])
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_deit_tiny_lowering_numerics(deit_exports, exporter, lowering):
    proto = deit_exports[exporter]
    model, result = lowered(proto, LOWERINGS[lowering][0])
    assert op_list(model)[LOWERINGS[lowering][2]] == 12
    assert_same_outputs(proto, model, REAL_TOL)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("form", ["scores_mul", "scores_div", "q_mul", "sqrt_both", "sdpa", "sdpa_mask"])
def test_hand_written_block_normalises(form, exporter):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        block = HandBlock(form).eval()
    proto = export_canonical(block, torch.randn(1, 10, 32), exporter)
    assert op_list(normalised(proto)[0])[INTERNAL] == 1
    model, _ = lowered(proto, frozenset())
    assert_same_outputs(proto, model, REAL_TOL)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", ["vit", "vit_sdpa", "swin", "mobilevit"])
def test_golden_model_attention_normalises_and_lowers(name, exporter):
    build, shape = GOLDEN[name]
    proto = export_canonical(build(seed=0), example_input(shape), exporter)
    softmaxes = op_list(ir.from_proto(proto))["Softmax"]
    model, result = normalised(proto)
    assert softmaxes and op_list(model)[INTERNAL] == softmaxes and not op_list(model)["Softmax"]
    if name == "swin":  # shifted windows: the shift mask folds into the bias input
        assert result.rules["attention_window_mask_to_bias"] and result.rules["attention_merge_score_biases"]
    for lowering in ("ort_mha", "decomposed"):
        model, _ = lowered(proto, LOWERINGS[lowering][0])
        assert op_list(model)[LOWERINGS[lowering][2]] == softmaxes
        assert_same_outputs(proto, model, REAL_TOL)


@pytest.mark.slow
@pytest.mark.parametrize("exporter", EXPORTERS)
def test_timm_swin_tiny_normalises(exporter):
    timm = import_timm()
    model = timm.create_model("swin_tiny_patch4_window7_224", img_size=112).eval()
    proto = export_canonical(model, torch.randn(1, 3, 112, 112), exporter)
    normal, result = normalised(proto)
    assert op_list(normal)[INTERNAL] == 12 and result.rules["attention_window_mask_to_bias"] == 2
    model, _ = lowered(proto, frozenset())
    assert_same_outputs(proto, model, REAL_TOL)
