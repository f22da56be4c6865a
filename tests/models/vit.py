"""DeiT-tiny-like Vision Transformer, attention written exactly as timm's (or via F.scaled_dot_product_attention).

image -> Conv(patch) -> flatten -> [cls] + tokens + pos_embed -> depth x (x + MHA(LN(x)); x + MLP_GELU(LN(x)))
      -> LN -> token 0 -> Linear -> logits
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import randomize_norms, seeded


class Attention(nn.Module):
    """qkv Linear -> reshape/permute -> (q*scale) @ k^T -> softmax -> @ v -> merge heads -> proj Linear."""

    def __init__(self, dim: int, heads: int, sdpa: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.sdpa = sdpa
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.sdpa:
            x = F.scaled_dot_product_attention(q, k, v)
        else:
            q = q * self.scale
            attn = q @ k.transpose(-2, -1)
            attn = attn.softmax(dim=-1)
            x = attn @ v
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class Mlp(nn.Module):
    """Linear -> activation (GELU, erf form, by default) -> Linear."""

    def __init__(self, dim: int, hidden: int, act_layer: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(
        self, dim: int, heads: int, mlp_ratio: float = 4.0, sdpa: bool = False, act_layer: type[nn.Module] = nn.GELU
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, sdpa=sdpa)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Conv patch embed, class token, learned position embedding, pre-norm blocks, final LayerNorm, Linear head."""

    def __init__(
        self,
        img_size: int = 32,
        patch_size: int = 8,
        in_chans: int = 3,
        num_classes: int = 10,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        sdpa: bool = False,
    ) -> None:
        super().__init__()
        num_patches = (img_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, num_patches + 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, sdpa=sdpa) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # B, N, C
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def build_vit(seed: int = 0, sdpa: bool = False, **kwargs: object) -> ViT:
    """A deterministic eval-mode ViT (defaults: img 32, patch 8, dim 64, depth 2, heads 4, 10 classes)."""
    with seeded(seed):
        model = ViT(sdpa=sdpa, **kwargs)  # type: ignore[arg-type]
        randomize_norms(model)
    return model.eval()


def build_vit_sdpa(seed: int = 0, **kwargs: object) -> ViT:
    """The same ViT (same weights for the same seed) with attention as F.scaled_dot_product_attention."""
    return build_vit(seed, sdpa=True, **kwargs)
