"""ResNet-style CNN with BatchNorm (non-trivial running stats, so BN folding is really exercised).

image -> Conv3x3-BN-ReLU(16) -> ResBlock(16->16) -> ResBlock/2(16->32, Conv1x1-BN shortcut) -> global avg pool -> Linear
ResBlock: ReLU(Conv3x3-BN-ReLU-Conv3x3-BN(x) + shortcut(x))
"""

from __future__ import annotations

import torch
from torch import nn

from .common import randomize_norms, seeded


class ResBlock(nn.Module):
    """Basic residual block; the shortcut is Conv1x1-BN when stride or width changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + self.shortcut(x))


class CNN(nn.Module):
    """Stem, two residual blocks (the second downsamples), global average pool, Linear head."""

    def __init__(self, in_chans: int = 3, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.layers = nn.Sequential(ResBlock(width, width), ResBlock(width, 2 * width, stride=2))
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.head(x.mean(dim=(2, 3)))


def build_cnn(seed: int = 0, **kwargs: object) -> CNN:
    """A deterministic eval-mode CNN (3x32x32 input) with random BN running mean/var and affine parameters."""
    with seeded(seed):
        model = CNN(**kwargs)  # type: ignore[arg-type]
        randomize_norms(model)
    return model.eval()
