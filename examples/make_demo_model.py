"""Save timm's deit_tiny_patch16_224 (random weights: no downloads) as a torch.export program for the demo.

usage: python examples/make_demo_model.py OUT.pt2
"""

import sys
from pathlib import Path

import torch

from vdeploy.timm_compat import import_timm


def main(out: Path) -> None:
    if out.exists():
        print(f"demo model: {out} (already there)")
        return
    torch.manual_seed(0)
    model = import_timm().create_model("deit_tiny_patch16_224", pretrained=False).eval()
    program = torch.export.export(model, (torch.randn(1, 3, 224, 224),))
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, str(out))
    print(f"demo model: {out} ({out.stat().st_size / 1e6:.1f} MB, deit_tiny_patch16_224, random init)")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
