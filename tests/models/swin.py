"""Swin-style hierarchical transformer: windowed attention with relative position bias, shifted windows, one merge.

image -> Conv(patch 2) -> LN -> [W-MSA block, SW-MSA block] -> PatchMerging -> [W-MSA, SW-MSA] -> LN -> mean -> Linear
SW-MSA = roll(-s) -> window partition -> attention(+rel-pos bias, +shift mask) -> window reverse -> roll(+s)
"""

from __future__ import annotations

import torch
from torch import nn

from .common import randomize_norms, seeded
from .vit import Mlp


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/ws * W/ws, ws*ws, C)."""
    B, H, W, C = x.shape
    x = x.view(B, H // ws, ws, W // ws, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, C)


def window_reverse(windows: torch.Tensor, ws: int, H: int, W: int) -> torch.Tensor:
    """(B * H/ws * W/ws, ws*ws, C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(-1, H // ws, W // ws, ws, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


def shift_mask(H: int, W: int, ws: int, shift: int) -> torch.Tensor:
    """(nW, ws*ws, ws*ws) additive mask: -100 between tokens that came from different regions before the roll."""
    img = torch.zeros(1, H, W, 1)
    cnt = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[:, hs, wsl, :] = cnt
            cnt += 1
    win = window_partition(img, ws).squeeze(-1)
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class WindowAttention(nn.Module):
    """qkv -> (q*scale) @ k^T + relative position bias [+ shift mask] -> softmax -> @ v -> proj."""

    def __init__(self, dim: int, heads: int, ws: int) -> None:
        super().__init__()
        self.heads, self.head_dim, self.ws = heads, dim // heads, ws
        self.scale = self.head_dim**-0.5
        self.rel_bias_table = nn.Parameter(0.1 * torch.randn((2 * ws - 1) ** 2, heads))
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
        self.register_buffer("rel_index", rel[..., 0] * (2 * ws - 1) + rel[..., 1], persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.rel_bias_table[self.rel_index.view(-1)].view(N, N, -1).permute(2, 0, 1)
        attn = attn + bias.unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(-1, nw, self.heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, N, N)
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(B_, N, C)
        return self.proj(x)


class SwinBlock(nn.Module):
    """x + window-attention(LN(x)) (cyclically shifted when shift > 0), then x + MLP(LN(x)); layout (B, H, W, C)."""

    def __init__(self, dim: int, heads: int, res: int, ws: int, shift: int) -> None:
        super().__init__()
        self.ws, self.shift = ws, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, ws)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, 4 * dim)
        self.register_buffer("attn_mask", shift_mask(res, res, ws, shift) if shift else None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, H, W, _ = x.shape
        y = self.norm1(x)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        y = window_reverse(self.attn(window_partition(y, self.ws), self.attn_mask), self.ws, H, W)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """(B, H, W, C) -> concat of the four 2x2-strided sub-grids (B, H/2, W/2, 4C) -> LN -> Linear -> 2C."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0, x1 = x[:, 0::2, 0::2], x[:, 1::2, 0::2]
        x2, x3 = x[:, 0::2, 1::2], x[:, 1::2, 1::2]
        return self.reduction(self.norm(torch.cat([x0, x1, x2, x3], dim=-1)))


class Swin(nn.Module):
    """Two stages of (W-MSA, SW-MSA) blocks with one PatchMerging between them, mean-pooled head."""

    def __init__(
        self, img_size: int = 32, patch_size: int = 2, in_chans: int = 3, num_classes: int = 10,
        dim: int = 32, heads: tuple[int, int] = (2, 4), window: int = 4,
    ) -> None:  # fmt: skip
        super().__init__()
        res, shift = img_size // patch_size, window // 2
        self.patch_embed = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)
        self.embed_norm = nn.LayerNorm(dim)
        self.stage1 = nn.Sequential(*[SwinBlock(dim, heads[0], res, window, s) for s in (0, shift)])
        self.merge = PatchMerging(dim)
        self.stage2 = nn.Sequential(*[SwinBlock(2 * dim, heads[1], res // 2, window, s) for s in (0, shift)])
        self.norm = nn.LayerNorm(2 * dim)
        self.head = nn.Linear(2 * dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed_norm(self.patch_embed(x).permute(0, 2, 3, 1))  # B, H, W, C
        x = self.stage2(self.merge(self.stage1(x)))
        return self.head(self.norm(x).mean(dim=(1, 2)))


def build_swin(seed: int = 0, **kwargs: object) -> Swin:
    """A deterministic eval-mode Swin (defaults: img 32, patch 2 -> 16x16 tokens, window 4, shift 2, dims 32/64)."""
    with seeded(seed):
        model = Swin(**kwargs)  # type: ignore[arg-type]
        randomize_norms(model)
    return model.eval()
