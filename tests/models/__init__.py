"""Golden test models built in code: small but real ViT, Swin, MobileViT and CNN architectures.

GOLDEN maps a name to (build_fn, input_shape); build_fn(seed=0) returns a deterministic nn.Module in eval() mode.
The registry is written out explicitly: importing a model module registers nothing.
The digits-trained models (real data, real accuracy) live in tests.models.digits.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .cnn import build_cnn
from .common import example_input
from .mobilevit import build_mobilevit
from .swin import build_swin
from .vit import build_vit, build_vit_sdpa

BuildFn = Callable[..., nn.Module]

GOLDEN: dict[str, tuple[BuildFn, tuple[int, ...]]] = {
    "vit": (build_vit, (1, 3, 32, 32)),
    "vit_sdpa": (build_vit_sdpa, (1, 3, 32, 32)),
    "swin": (build_swin, (1, 3, 32, 32)),
    "mobilevit": (build_mobilevit, (1, 3, 32, 32)),
    "cnn": (build_cnn, (1, 3, 32, 32)),
}

__all__ = ["GOLDEN", "BuildFn", "example_input"]
