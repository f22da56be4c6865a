"""Helpers shared by the golden models: seeded construction, non-trivial norm parameters, seeded inputs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block under torch.manual_seed(seed) without disturbing the caller's global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def randomize_norms(model: nn.Module) -> None:
    """Give every BatchNorm/LayerNorm non-trivial affine parameters (and BN running stats), drawn from torch's RNG.

    Identity norms (weight 1, bias 0, mean 0, var 1) would let a wrong BN fold or a dropped LayerNorm scale pass.
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.weight.copy_(1.0 + 0.2 * torch.randn_like(m.weight))
                m.bias.copy_(0.1 * torch.randn_like(m.bias))
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.2 * torch.randn_like(m.running_mean))
                m.running_var.copy_(torch.empty_like(m.running_var).uniform_(0.5, 2.0))


def example_input(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """A seeded standard-normal input of the given shape."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))
