"""Backends by name. An explicit table of lazy imports: `vdeploy --help` never imports a runtime.

A new backend is one file (a BackendBase subclass), one row here and its targets in targets.yaml.
"""

from __future__ import annotations

import importlib

from vdeploy.errors import BackendError

_TABLE = {
    "onnxruntime": ("vdeploy.backends.onnxruntime", "OnnxRuntimeBackend"),
    "openvino": ("vdeploy.backends.openvino", "OpenVinoBackend"),
    "npu": ("vdeploy.backends.npu", "NpuBackend"),
    "tensorrt": ("vdeploy.backends.tensorrt", "TensorRtBackend"),
    "tvm": ("vdeploy.backends.tvm", "TvmBackend"),
    "ethos_u": ("vdeploy.backends.ethos_u", "EthosUBackend"),
    "executorch": ("vdeploy.backends.executorch", "ExecuTorchBackend"),
    "rknn": ("vdeploy.backends.rknn", "RknnBackend"),
}


def backend_names() -> tuple[str, ...]:
    return tuple(_TABLE)


def backend_class(name: str):
    """The backend's class (its module imports no runtime at module level); BackendError for an unknown name."""
    entry = _TABLE.get(name)
    if entry is None:
        raise BackendError(
            f"backend {name!r} is not implemented in this vdeploy version", f"implemented: {', '.join(_TABLE)}"
        )
    module, cls = entry
    return getattr(importlib.import_module(module), cls)


def get_backend(name: str):
    """The backend object for a name from targets.yaml; raise BackendError when it is not built or installed."""
    backend = backend_class(name)()
    if not backend.available():
        raise BackendError(f"the {name} runtime is not installed", f"pip install 'vdeploy[{name}]'")
    return backend
