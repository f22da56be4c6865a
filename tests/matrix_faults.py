"""Models whose own code kills or holds the Ray worker process that builds them: the release-matrix tests' explicit
fault hooks, loaded through `arch: matrix_faults:held|crash` (the test copies this file beside its release file and
names that folder in python_path:). Nothing in vdeploy or Ray is replaced: the worker process really dies.

crash(): segfaults its own process (SIGSEGV), as a broken native extension would; every attempt dies the same way.
held(): the first attempt writes its pid to held.pids beside this file and waits (at most HOLD_S) for the test to
        kill it; a later attempt (the retry) builds the model at once.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch
from torch import nn

HOLD_S = 120
PIDS = Path(__file__).with_name("held.pids")
INPUT_SHAPE = [1, 3, 32, 32]


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)]
    return nn.Sequential(*layers).eval()


def crash() -> nn.Module:
    os.kill(os.getpid(), signal.SIGSEGV)
    raise AssertionError("unreachable: SIGSEGV ends the process")


def held() -> nn.Module:
    with PIDS.open("a") as fh:
        fh.write(f"{os.getpid()}\n")
    if len(PIDS.read_text().split()) == 1:
        time.sleep(HOLD_S)
    return small_cnn()
