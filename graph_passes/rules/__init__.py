"""The rule specs legalization runs, in order. An explicit tuple: nothing registers itself on import.

Order matters: attention comes first, as two adjacent specs (normalise every exporter shape into the internal
op, then lower it), before any other family looks at its MatMuls and Softmax; batched MatMul rank next, so the
MatMuls a decomposed attention leaves are split for rank-3 targets before Linear sees them; GELU before Erf (an
Erf-form GELU is rewritten as a whole before a lone Erf is replaced); BatchNorm folds into Conv/Gemm (CONV_BN) before a
leftover BatchNormalization is decomposed (BATCH_NORM) and before Linear turns Gemm/MatMul into 1x1 Conv; a constant
Gather becomes a Slice last (attention normalisation reads exporters' qkv Gathers first).
"""

from vdeploy.graph_passes.rules.attention import ATTENTION, ATTENTION_NORMALIZE
from vdeploy.graph_passes.rules.conv_bn import BATCH_NORM, CONV_BN
from vdeploy.graph_passes.rules.erf import ERF
from vdeploy.graph_passes.rules.gather import GATHER
from vdeploy.graph_passes.rules.gelu import GELU
from vdeploy.graph_passes.rules.layer_norm import LAYER_NORM
from vdeploy.graph_passes.rules.linear import LINEAR
from vdeploy.graph_passes.rules.matmul import BATCHED_MATMUL
from vdeploy.graph_passes.rules.softmax import SOFTMAX

ALL_SPECS: tuple = (
    ATTENTION_NORMALIZE,
    ATTENTION,
    BATCHED_MATMUL,
    LAYER_NORM,
    GELU,
    SOFTMAX,
    ERF,
    CONV_BN,
    BATCH_NORM,
    LINEAR,
    GATHER,
)
