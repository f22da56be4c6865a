"""BatchNorm: folded into Conv/ConvTranspose/Gemm everywhere; a lone BatchNormalization decomposed without BN."""

from __future__ import annotations

import numpy as np
import pytest

from vdeploy.graph_passes.rules.base import Direction
from vdeploy.graph_passes.rules.conv_bn import BATCH_NORM, CONV_BN

from .helpers import ORT_OPS, assert_same_numerics, build, legalized, op_types, without

RNG = np.random.default_rng(3)


def bn_params(c: int, prefix: str = "") -> dict[str, np.ndarray]:
    return {
        f"{prefix}gamma": (1 + 0.3 * RNG.standard_normal(c)).astype(np.float32),
        f"{prefix}beta": (0.2 * RNG.standard_normal(c)).astype(np.float32),
        f"{prefix}mean": (0.3 * RNG.standard_normal(c)).astype(np.float32),
        f"{prefix}var": RNG.uniform(0.5, 2.0, c).astype(np.float32),
    }


CONV_BN_GRAPH = """
g (float[1,3,8,8] x) => (float[1,8,6,6] y) {
  c = Conv <kernel_shape=[3,3]> (x, w, b)
  y = BatchNormalization <epsilon=1e-3> (c, gamma, beta, mean, var)
}"""
W = RNG.standard_normal((8, 3, 3, 3)).astype(np.float32)
B = RNG.standard_normal(8).astype(np.float32)


@pytest.mark.parametrize("op_set", [ORT_OPS, without("BatchNormalization")])
def test_conv_bn_folds_on_every_target(op_set):
    model = build(CONV_BN_GRAPH, w=W, b=B, **bn_params(8))
    out, result = legalized(model, op_set, CONV_BN, BATCH_NORM)
    assert op_types(out) == ["Conv"] and result.rules == {"conv_bn_folding": 1}
    assert result.fused == {"conv_bn": 1}
    assert_same_numerics(model, out)


def test_conv_transpose_and_gemm_fold():
    model = build(
        """
g (float[1,4,5,5] x, float[3,6] v) => (float[1,6,11,11] y, float[3,5] z) {
  c = ConvTranspose <kernel_shape=[3,3], strides=[2,2], group=2> (x, w)
  y = BatchNormalization (c, gamma, beta, mean, var)
  m = Gemm <transB=1, beta=0.5> (v, gw, gb)
  z = BatchNormalization (m, g_gamma, g_beta, g_mean, g_var)
}""",
        w=RNG.standard_normal((4, 3, 3, 3)).astype(np.float32),
        gw=RNG.standard_normal((5, 6)).astype(np.float32),
        gb=RNG.standard_normal(5).astype(np.float32),
        **bn_params(6),
        **bn_params(5, "g_"),
    )
    out, result = legalized(model, ORT_OPS, CONV_BN)
    assert op_types(out) == ["ConvTranspose", "Gemm"]
    assert result.rules == {"conv_transpose_bn_folding": 1, "gemm_bn_folding": 1}
    assert_same_numerics(model, out)


def test_no_fold_when_bn_parameters_are_inputs_or_weights_shared():
    model = build(
        """
g (float[1,3,8,8] x, float[8] gamma) => (float[1,8,6,6] y, float[1,8,6,6] y2) {
  c = Conv <kernel_shape=[3,3]> (x, w, b)
  y = BatchNormalization (c, gamma, beta, mean, var)
  c2 = Conv <kernel_shape=[3,3]> (x, w2)
  y2 = BatchNormalization (c2, g2, beta, mean, var)
  c3 = Conv <kernel_shape=[3,3]> (x, w2)
}""",
        w=W,
        b=B,
        w2=W.copy(),
        g2=np.ones(8, np.float32),
        **{k: v for k, v in bn_params(8).items() if k != "gamma"},
    )
    out, result = legalized(model, ORT_OPS, CONV_BN)
    assert op_types(out).count("BatchNormalization") == 2 and not result.rules


@pytest.mark.parametrize("shape", ["1,8,6,6", "4,8"])
def test_lone_batch_norm_decomposes_without_bn(shape):
    model = build(
        f"""
g (float[{shape}] x) => (float[{shape}] y) {{
  y = BatchNormalization <epsilon=1e-3> (x, gamma, beta, mean, var)
}}""",
        **bn_params(8),
    )
    out, result = legalized(model, without("BatchNormalization"), CONV_BN, BATCH_NORM)
    assert op_types(out) == ["Mul", "Add"] and result.rules == {"batch_norm_decomposition": 1}
    assert_same_numerics(model, out)


def test_lone_batch_norm_kept_where_supported():
    body = "g (float[1,8,6,6] x) => (float[1,8,6,6] y) {\n y = BatchNormalization (x, gamma, beta, mean, var)\n}"
    model = build(body, **bn_params(8))
    out, result = legalized(model, ORT_OPS, BATCH_NORM)
    assert op_types(out) == ["BatchNormalization"] and result.choices["batch_norm"] == Direction.kept


def test_training_mode_batch_norm_is_not_decomposed():
    model = build(
        """
g (float[1,8,6,6] x) => (float[1,8,6,6] y) {
  y, rm, rv = BatchNormalization <training_mode=1> (x, gamma, beta, mean, var)
}""",
        **bn_params(8),
    )
    out, result = legalized(model, without("BatchNormalization"), BATCH_NORM)
    assert op_types(out) == ["BatchNormalization"] and not result.rules
