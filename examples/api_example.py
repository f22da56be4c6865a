"""The Python API on an in-memory model: build for two targets, read the results, re-validate a bundle.

python examples/api_example.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import vdeploy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.models.vit import build_vit  # noqa: E402  (a small ViT built in code)

out = Path(sys.argv[1] if len(sys.argv) > 1 else "out/api")
model = build_vit(seed=0)  # any nn.Module; exported with the example inputs
results = vdeploy.build(
    model,
    ["x86-cpu", "jetson"],
    example_inputs=(torch.randn(1, 3, 32, 32),),
    budgets={"latency_ms": 20.0},
    out=out,
    name="tiny_vit",
)
for r in results:
    latency = r.latency_ms or {}
    print(
        f"{r.target:18s} {r.backend:10s} {r.precision:5s} verdict={r.verdict:10s} "
        f"cosine={r.numerics['cosine']:.6f} p50={latency.get('p50', float('nan')):.3f} ms "
        f"({latency.get('source', 'measured')}) -> {r.bundle}"
    )
check = vdeploy.validate(results[0].bundle, iters=20)
print(f"validate {results[0].bundle.name}: {check.verdict}, cosine {check.numerics['cosine']:.6f}")
print("targets:", ", ".join(t.name for t in vdeploy.targets()))
try:
    vdeploy.build(model, "no-such-chip", example_inputs=(torch.randn(1, 3, 32, 32),), out=out)
except vdeploy.errors.VdeployError as exc:
    print("error:", exc.one_line())
