"""BatchNormalization: folded into the Conv/ConvTranspose/Gemm before it on every target; a BatchNormalization
left over (nothing foldable before it) is kept where the target has it, else decomposed.

CONV_BN (every target; onnxscript's shipped folds, renamed):
- conv_bn_folding: BatchNormalization(Conv(x, W, b))  =>  Conv(x, W*s, (b-mean)*s+beta), s = gamma/sqrt(var+eps)
- conv_transpose_bn_folding: the same for ConvTranspose (per-group output channels)
- gemm_bn_folding: the same for Gemm
  (parameters must be constant initializers not shared with other nodes)
BATCH_NORM (targets without BatchNormalization):
- batch_norm_decomposition: BatchNormalization(x, gamma, beta, mean, var) (inference, constants)
  =>  Mul(x, s) -> Add(t), with s = gamma/sqrt(var+eps), t = beta - mean*s shaped [C, 1, ..., 1]
"""

from __future__ import annotations

import numpy as np
from onnxscript.rewriter.pattern import MatchResult, RewriteRule
from onnxscript.rewriter.rules.common._fuse_batchnorm import (  # pinned onnxscript 0.7.2
    FuseBatchNormIntoConv,
    FuseBatchNormIntoConvTranspose,
    FuseBatchNormIntoGemm,
)

from vdeploy.graph_passes.rules.base import Direction, Tier, TieredSpec, const, int_attr, ops


def _batch_norm(op, x):
    return op.BatchNormalization(x, _allow_other_inputs=True, _outputs=["y"])


def _check_decompose(context, x, y, **_) -> MatchResult:
    result = MatchResult()
    node = y.producer()
    if int_attr(node, "training_mode", 0) != 0:
        return result.fail("BatchNormalization in training mode", node)
    if len(node.inputs) != 5 or any(v is None or v.const_value is None for v in node.inputs[1:]):
        return result.fail("scale/bias/mean/var are not all constants", node)
    if x.shape is None or x.shape.rank() < 2:
        return result.fail("input rank unknown (or < 2)", x)
    return result


def _decompose(op, x, y, **_):
    node = y.producer()
    gamma, beta, mean, var = (v.const_value.numpy().astype(np.float64) for v in node.inputs[1:])
    eps = node.attributes["epsilon"].as_float() if "epsilon" in node.attributes else 1e-5
    scale = gamma / np.sqrt(var + eps)
    shift = beta - mean * scale
    shape = (-1,) + (1,) * (x.shape.rank() - 2)
    return op.Add(op.Mul(x, const(op, scale.reshape(shape), x)), const(op, shift.reshape(shape), x))


CONV_BN = TieredSpec(
    name="conv_bn",
    tiers=(
        Tier(
            Direction.fused,
            ops(),
            (
                FuseBatchNormIntoConv.rule(name="conv_bn_folding"),
                FuseBatchNormIntoConvTranspose.rule(name="conv_transpose_bn_folding"),
                FuseBatchNormIntoGemm.rule(name="gemm_bn_folding"),
            ),
        ),
    ),
)

BATCH_NORM = TieredSpec(
    name="batch_norm",
    tiers=(
        Tier(Direction.kept, ops("BatchNormalization"), ()),
        Tier(
            Direction.decomposed,
            ops("Mul", "Add"),
            (RewriteRule(_batch_norm, _decompose, _check_decompose, name="batch_norm_decomposition"),),
        ),
    ),
)
