"""MobileViT-style hybrid CNN/transformer.

image -> Conv3x3/2-BN-SiLU -> MV2(16->16) -> MV2/2(16->24) -> MobileViT block(24, d=32) -> Conv1x1-BN-SiLU(64)
      -> global avg pool -> Linear
MobileViT block: x -> Conv3x3-BN-SiLU -> Conv1x1(d) -> unfold 2x2 patches -> 2 x transformer(SiLU MLP) -> LN -> fold
              -> Conv1x1-BN-SiLU(C) -> concat with x -> Conv3x3-BN-SiLU(C)
"""

from __future__ import annotations

import torch
from torch import nn

from .common import randomize_norms, seeded
from .vit import Block


def conv_bn(cin: int, cout: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> SiLU (optional)."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MV2: Conv1x1 expand -> depthwise Conv3x3 (stride) -> Conv1x1 project (no act); + x when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int = 1, expand: int = 2) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            conv_bn(cin, hidden, 1),
            conv_bn(hidden, hidden, 3, stride, groups=hidden),
            conv_bn(hidden, cout, 1, act=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.use_residual else y


class MobileViTBlock(nn.Module):
    """Local conv features -> global attention over same-offset pixels of 2x2 patches -> fused with the input."""

    def __init__(self, channels: int, dim: int, depth: int = 2, heads: int = 2, patch: int = 2) -> None:
        super().__init__()
        self.patch = patch
        self.conv_kxk = conv_bn(channels, channels, 3)
        self.conv_1x1 = nn.Conv2d(channels, dim, 1, bias=False)
        self.transformer = nn.Sequential(*[Block(dim, heads, mlp_ratio=2.0, act_layer=nn.SiLU) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.conv_proj = conv_bn(dim, channels, 1)
        self.conv_fusion = conv_bn(2 * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_1x1(self.conv_kxk(x))
        B, C, H, W = x.shape
        p = self.patch
        nh, nw = H // p, W // p
        # unfold: (B, C, H, W) -> (B * p*p, nh*nw, C), as timm's MobileVitBlock
        x = x.reshape(B * C * nh, p, nw, p).transpose(1, 2)
        x = x.reshape(B, C, nh * nw, p * p).transpose(1, 3).reshape(B * p * p, nh * nw, C)
        x = self.norm(self.transformer(x))
        # fold: (B * p*p, nh*nw, C) -> (B, C, H, W)
        x = x.contiguous().view(B, p * p, nh * nw, C)
        x = x.transpose(1, 3).reshape(B * C * nh, nw, p, p)
        x = x.transpose(1, 2).reshape(B, C, nh * p, nw * p)
        x = self.conv_proj(x)
        return self.conv_fusion(torch.cat([shortcut, x], dim=1))


class MobileViT(nn.Module):
    """Conv stem, two MV2 blocks, one MobileViT block, 1x1 expansion, pooled Linear classifier."""

    def __init__(self, in_chans: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(in_chans, 16, 3, stride=2)
        self.mv2 = nn.Sequential(InvertedResidual(16, 16), InvertedResidual(16, 24, stride=2))
        self.mvit = MobileViTBlock(24, dim=32)
        self.final_conv = conv_bn(24, 64, 1)
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.final_conv(self.mvit(self.mv2(self.stem(x))))
        return self.head(x.mean(dim=(2, 3)))


def build_mobilevit(seed: int = 0, **kwargs: object) -> MobileViT:
    """A deterministic eval-mode MobileViT (32x32 input -> MobileViT block on an 8x8 map)."""
    with seeded(seed):
        model = MobileViT(**kwargs)  # type: ignore[arg-type]
        randomize_norms(model)
    return model.eval()
