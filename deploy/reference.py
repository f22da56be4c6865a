"""Seeded reference inputs and the reference outputs they produce.

LoadedModel + --input-shape -> input specs -> seeded samples [N, *shape] -> PyTorch eager outputs
(for an ONNX input the reference is ONNX Runtime on the file as given, all graph optimisations off)
"""

from __future__ import annotations

import numpy as np

from vdeploy.errors import ModelLoadError, first_line
from vdeploy.load import InputSpec, LoadedModel, ModelFormat

SEED = 20261122


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise ModelLoadError(f"--input-shape {text!r} is not a list of integers", "write it as 1,3,224,224") from None
    if not dims or any(d <= 0 for d in dims):
        raise ModelLoadError(f"--input-shape {text!r} has a non-positive dimension", "write it as 1,3,224,224")
    return dims


def resolve_inputs(loaded: LoadedModel, shape: tuple[int, ...] | None) -> tuple[InputSpec, ...]:
    if shape is None:
        if not loaded.inputs:
            raise ModelLoadError(f"{loaded.format.value} files do not record the input shape",
                                 "pass --input-shape, e.g. --input-shape 1,3,224,224")
        return loaded.inputs
    if len(loaded.inputs) > 1:
        raise ModelLoadError(f"the model has {len(loaded.inputs)} inputs; --input-shape sets only one",
                             "use a model file that records its input shapes (.pt2 or ONNX)")
    recorded = loaded.inputs[0] if loaded.inputs else InputSpec("input", shape)
    if loaded.format is ModelFormat.onnx and recorded.shape != shape:
        raise ModelLoadError(f"input shape {_fmt(shape)} does not fit the model: its ONNX input "
                             f"{recorded.name!r} is fixed to {_fmt(recorded.shape)}", "drop --input-shape or re-export")
    return (InputSpec(recorded.name, shape, recorded.dtype),)


def make_samples(inputs: tuple[InputSpec, ...], count: int) -> dict[str, np.ndarray]:
    """Seeded standard-normal samples, one batch per sample: {name: [count, *shape]}."""
    rng = np.random.default_rng(SEED)
    samples = {}
    for spec in inputs:
        if not np.issubdtype(np.dtype(spec.dtype), np.floating):
            raise ModelLoadError(f"input {spec.name!r} has dtype {spec.dtype}; vdeploy builds image models "
                                 "with floating-point inputs", "export the model with a float image input")
        samples[spec.name] = rng.standard_normal((count, *spec.shape)).astype(spec.dtype)
    return samples


def reference_outputs(loaded: LoadedModel, samples: dict[str, np.ndarray]) -> list[np.ndarray]:
    """One array per model output, stacked over samples."""
    count = next(iter(samples.values())).shape[0]
    run = _torch_runner(loaded) if loaded.is_torch else _onnx_runner(loaded)
    per_sample = [run([a[i] for a in samples.values()]) for i in range(count)]
    return [np.stack([s[k] for s in per_sample]) for k in range(len(per_sample[0]))]


def _torch_runner(loaded: LoadedModel):
    import torch

    def run(arrays):
        tensors = [torch.from_numpy(a) for a in arrays]
        try:
            with torch.inference_mode():
                result = loaded.module(*tensors)
        except Exception as exc:  # a shape mismatch surfaces as any of several torch errors
            shapes = " and ".join(_fmt(a.shape) for a in arrays)
            raise ModelLoadError(f"input shape {shapes} does not fit the model: {first_line(exc, 200)}",
                                 "pass the shape the model was built for with --input-shape") from None
        return [t.detach().float().numpy() if t.is_floating_point() else t.numpy() for t in _flatten(result)]

    return run


def _onnx_runner(loaded: LoadedModel):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(loaded.onnx_model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(f"ONNX Runtime cannot run {loaded.source} as given: {first_line(exc, 200)}",
                             "check the model with onnx.checker and onnxruntime first") from None
    names = [i.name for i in session.get_inputs()]
    return lambda arrays: session.run(None, dict(zip(names, arrays)))


def _flatten(result) -> list:
    if isinstance(result, (list, tuple)):
        return [t for item in result for t in _flatten(item)]
    if isinstance(result, dict):
        return [t for item in result.values() for t in _flatten(item)]
    return [result]


def _fmt(shape) -> str:
    return ",".join(str(d) for d in shape)
