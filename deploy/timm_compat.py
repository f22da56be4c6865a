"""Import timm on hosts where torchvision's compiled ops cannot load (see ENVIRONMENT.md).

PyPI's torchvision for torch 2.13 is a CUDA build; beside the CPU torch its _C.so fails and `import torchvision`
raises "operator torchvision::nms does not exist". Defining the two op schemas first lets torchvision and timm import
(their compiled ops stay unusable, which model creation does not need). vdeploy never needs timm at run time.
"""

from __future__ import annotations

import sys

_schema_lib = None  # kept alive: dropping the Library object would unregister the schemas


def import_timm():
    """Return the timm module, or raise ImportError with the reason."""
    global _schema_lib
    try:
        import torchvision  # noqa: F401
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise ImportError(f"torchvision cannot be imported: {exc}") from None
        import torch

        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        _schema_lib = torch.library.Library("torchvision", "DEF")
        _schema_lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _schema_lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import timm

    return timm
