"""Wall time of `vdeploy debug` (bisect) on the golden ViT, for comparing two vdeploy checkouts.

Run with each checkout's interpreter, alternating (the machine is noisy): python benchmarks/bisect_time.py [runs]
Every run legalizes with the test suite's deliberately broken LayerNorm rule appended (tests/test_bisect.py), so the
bisect has a bad pass to find. Prints one line per run: seconds, stages, first bad stage.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.models import GOLDEN  # noqa: E402
from tests.test_bisect import BROKEN  # noqa: E402
from vdeploy.bisect import bisect  # noqa: E402
from vdeploy.graph_passes.rules import ALL_SPECS  # noqa: E402


def main(runs: int) -> None:
    build_fn, shape = GOLDEN["vit"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "vit.pt2"
        torch.export.save(torch.export.export(build_fn(seed=0), (torch.randn(shape),)), str(path))
        bisect(str(path), "onnxruntime-cpu", samples=2)  # warm imports and caches
        for _ in range(runs):
            start = time.perf_counter()
            report = bisect(str(path), "onnxruntime-cpu", samples=8, specs=(*ALL_SPECS, BROKEN))
            print(
                f"{time.perf_counter() - start:.2f} s  {len(report.stages)} stages  first bad: "
                f"{report.first_bad_stage}",
                flush=True,
            )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
