"""Real data for accuracy checks: sklearn's 8x8 handwritten digits, a tiny ViT and a tiny CNN trained on them.

load_digits (1797 x 8x8, 10 classes) -> x/8 - 1 -> seeded stratified 75/25 split -> seeded AdamW, one-cycle LR
-> eval model + test tensors + FP32 test accuracy. Trained weights are cached (key: hash of the training config) in
$VDEPLOY_TEST_CACHE or ~/.cache/vdeploy-tests/, so only a cold cache trains.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .cnn import CNN
from .common import seeded
from .vit import ViT

SPLIT_SEED = 0
TEST_FRACTION = 0.25


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the trained weights (hashed into the cache key)."""

    arch: str
    arch_kwargs: dict
    epochs: int
    lr: float
    weight_decay: float
    batch_size: int = 64
    seed: int = 0


CONFIGS: dict[str, TrainConfig] = {
    "cnn": TrainConfig("cnn", {"in_chans": 1, "width": 16}, epochs=15, lr=3e-3, weight_decay=1e-4),
    "vit": TrainConfig(
        "vit",
        {"img_size": 8, "patch_size": 2, "in_chans": 1, "dim": 64, "depth": 2, "heads": 4},
        epochs=40,
        lr=2e-3,
        weight_decay=0.05,
    ),  # fmt: skip
}


@dataclasses.dataclass(frozen=True)
class DigitsSplit:
    """Float inputs (N, 1, 8, 8) in [-1, 1] and int64 labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@dataclasses.dataclass(frozen=True)
class TrainedDigits:
    """An eval-mode digits model, its test set and FP32 test accuracy; x_train doubles as calibration data."""

    model: nn.Module
    x_test: torch.Tensor
    y_test: torch.Tensor
    accuracy: float
    x_train: torch.Tensor
    from_cache: bool
    train_seconds: float | None  # None when the weights came from the cache


def load_split() -> DigitsSplit:
    """The fixed, seeded, stratified train/test split of sklearn's digits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    y = torch.tensor(data.target, dtype=torch.int64)
    idx_train, idx_test = train_test_split(range(len(y)), test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y)
    return DigitsSplit(x[idx_train], y[idx_train], x[idx_test], y[idx_test])


def cache_path(cfg: TrainConfig) -> Path:
    """$VDEPLOY_TEST_CACHE (else ~/.cache/vdeploy-tests) / a name keyed by sha256(config, split, torch version)."""
    root = Path(os.environ.get("VDEPLOY_TEST_CACHE") or Path.home() / ".cache" / "vdeploy-tests")
    key = {"cfg": dataclasses.asdict(cfg), "split": [SPLIT_SEED, TEST_FRACTION], "torch": torch.__version__}
    return root / f"digits-{cfg.arch}-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]}.pt"


def build_model(cfg: TrainConfig) -> nn.Module:
    """An untrained model of the config's architecture, initialised from cfg.seed."""
    with seeded(cfg.seed):
        return CNN(**cfg.arch_kwargs) if cfg.arch == "cnn" else ViT(**cfg.arch_kwargs)


def train(cfg: TrainConfig, split: DigitsSplit) -> nn.Module:
    """Seeded AdamW, one-cycle LR (10% warm-up, cosine decay), cross-entropy; returns the model in eval mode."""
    model = build_model(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(split.y_train) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.1)
    gen = torch.Generator().manual_seed(cfg.seed)
    with seeded(cfg.seed):
        for _ in range(cfg.epochs):
            for idx in torch.randperm(len(split.y_train), generator=gen).split(cfg.batch_size):
                loss = F.cross_entropy(model(split.x_train[idx]), split.y_train[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy in [0, 1]."""
    return (model(x).argmax(dim=1) == y).float().mean().item()


def trained_digits(arch: str) -> TrainedDigits:
    """Train (or load from the cache) the digits model for arch ("cnn" or "vit")."""
    cfg, split = CONFIGS[arch], load_split()
    path = cache_path(cfg)
    model, seconds = build_model(cfg), None
    try:
        model.load_state_dict(torch.load(path, weights_only=True))
        from_cache = True
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError):  # absent, corrupt or stale: train
        from_cache = False
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny models: one thread is fastest, immune to oversubscription, reproducible
        try:
            start = time.perf_counter()
            model = train(cfg, split)
            seconds = time.perf_counter() - start
        finally:
            torch.set_num_threads(threads)
        _save_atomically(model.state_dict(), path)
    model.eval()
    acc = accuracy(model, split.x_test, split.y_test)
    return TrainedDigits(model, split.x_test, split.y_test, acc, split.x_train, from_cache, seconds)


def _save_atomically(state: dict, path: Path) -> None:
    """Write a temp file beside path, then rename; an unwritable cache only costs retraining next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        torch.save(state, tmp)
        os.replace(tmp, path)
    except OSError:
        pass
