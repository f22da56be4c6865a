"""Seeded reference inputs and the reference outputs they produce.

LoadedModel + --input-shape -> input specs -> sample specs (from the model, then --input-spec) -> seeded samples
[N, *shape] -> PyTorch eager outputs (for an ONNX input the reference is ONNX Runtime on the file as given, all
graph optimisations off) -> refused when they hold NaN (the inputs, not the build, are wrong)
"""

from __future__ import annotations

import enum
import math
import os
import re
from dataclasses import dataclass

import numpy as np

from vdeploy.errors import InputSpecError, ModelLoadError, first_line
from vdeploy.load import InputSpec, LoadedModel, ModelFormat

SEED = 20261122
MAX_RANK = 16  # dimensions of one input (numpy stops at 64; vision models use <= 6)
MAX_SAMPLE_BYTES = 4 << 30  # all seeded validation samples together, as drawn (float64), before any allocation
SAMPLE_BYTES_ENV = "VDEPLOY_MAX_SAMPLE_BYTES"


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise ModelLoadError(f"--input-shape {text!r} is not a list of integers", "write it as 1,3,224,224") from None
    if not dims or any(d <= 0 for d in dims):
        raise ModelLoadError(f"--input-shape {text!r} has a non-positive dimension", "write it as 1,3,224,224")
    check_rank("--input-shape", dims)
    return dims


def check_rank(name: str, shape: tuple[int, ...]) -> None:
    if len(shape) > MAX_RANK:
        raise InputSpecError(
            f"{name} has {len(shape)} dimensions; vdeploy takes inputs of at most {MAX_RANK}",
            "check the shape (vision inputs are N,C,H,W or similar)",
        )


def check_sample_size(inputs: tuple[InputSpec, ...], count: int) -> None:
    """Refuse, before allocating, inputs whose seeded samples would not fit: a declared 10^12-element input or
    --input-shape 1,3,100000,100000 is a clear error, not a MemoryError."""
    limit = int(os.environ.get(SAMPLE_BYTES_ENV) or MAX_SAMPLE_BYTES)
    total = 0
    for spec in inputs:
        check_rank(f"input {spec.name!r}", spec.shape)
        elements = math.prod(spec.shape)
        total += count * elements * 8  # drawn as float64, then cast
        if total > limit:
            raise InputSpecError(
                f"input {spec.name!r} of shape {_fmt(spec.shape)} has {elements:.3g} elements: {count} validation "
                f"samples would take {total / 2**30:.3g} GiB, over the {limit / 2**30:.3g} GiB limit",
                f"check the shape (--input-shape, or the model's declared input); to allow it, set {SAMPLE_BYTES_ENV}",
            )


def resolve_inputs(loaded: LoadedModel, shape: tuple[int, ...] | None) -> tuple[InputSpec, ...]:
    if shape is None:
        if not loaded.inputs:
            raise ModelLoadError(
                f"{loaded.format.value} files do not record the input shape",
                "pass --input-shape, e.g. --input-shape 1,3,224,224",
            )
        return loaded.inputs
    if len(loaded.inputs) > 1:
        raise ModelLoadError(
            f"the model has {len(loaded.inputs)} inputs; --input-shape sets only one",
            "use a model file that records its input shapes (.pt2 or ONNX)",
        )
    recorded = loaded.inputs[0] if loaded.inputs else InputSpec("input", shape)
    if loaded.format is ModelFormat.onnx and recorded.shape != shape:
        raise ModelLoadError(
            f"input shape {_fmt(shape)} does not fit the model: its ONNX input "
            f"{recorded.name!r} is fixed to {_fmt(recorded.shape)}",
            "drop --input-shape or re-export",
        )
    return (InputSpec(recorded.name, shape, recorded.dtype),)


class SampleKind(str, enum.Enum):
    normal = "normal"  # standard normal (images, activations)
    uniform = "uniform"  # uniform in [low, high)
    positive = "positive"  # uniform in [0.1, 2): variances, scales, Sqrt/Log inputs
    ids = "ids"  # integers in [0, vocab): token / class ids
    mask = "mask"  # 0/1 (bool for a bool input)


@dataclass(frozen=True)
class SampleSpec:
    kind: SampleKind = SampleKind.normal
    low: float = 0.0
    high: float = 1.0
    vocab: int = 0
    why: str = ""  # where the spec comes from (--input-spec, or what in the model asked for it)

    def describe(self) -> str:
        text = {
            SampleKind.uniform: f"uniform [{self.low:g}, {self.high:g})",
            SampleKind.ids: f"ids < {self.vocab}",
            SampleKind.normal: "standard normal",
        }.get(self.kind, self.kind.value)
        return text + (f" ({self.why})" if self.why else "")


INPUT_SPEC_HELP = "NAME:normal | NAME:uniform:LO:HI | NAME:positive | NAME:ids:VOCAB | NAME:mask"


def parse_input_spec(text: str) -> tuple[str, SampleSpec]:
    """'var:positive' -> ('var', SampleSpec(positive)); 'x:uniform:0:1', 'tokens:ids:30522', 'm:mask', 'x:normal'."""
    name, _, rest = text.partition(":")
    kind, *args = rest.split(":") if rest else [""]
    bad = InputSpecError(f"--input-spec {text!r} is not one of {INPUT_SPEC_HELP}", "e.g. --input-spec var:positive")
    if not name or kind not in SampleKind.__members__:
        raise bad
    try:
        if kind == "uniform" and len(args) == 2 and float(args[0]) < float(args[1]):
            return name, SampleSpec(SampleKind.uniform, float(args[0]), float(args[1]), why="--input-spec")
        if kind == "ids" and len(args) == 1 and int(args[0]) > 0:
            return name, SampleSpec(SampleKind.ids, vocab=int(args[0]), why="--input-spec")
    except ValueError:
        raise bad from None
    if kind in ("uniform", "ids") or args:
        raise bad
    return name, SampleSpec(SampleKind(kind), why="--input-spec")


def sample_specs(loaded: LoadedModel, inputs: tuple[InputSpec, ...], given=()) -> dict[str, SampleSpec]:
    """name -> SampleSpec: --input-spec texts (`given`) over what the model says (see _from_model)."""
    specs = {spec.name: _from_model(loaded, spec) for spec in inputs}
    for text in given:
        name, spec = parse_input_spec(text)
        if name not in specs:
            raise InputSpecError(
                f"--input-spec names {name!r}, which is not a model input", f"the inputs are: {', '.join(specs)}"
            )
        specs[name] = spec
    for inp in inputs:
        if specs[inp.name].kind is SampleKind.ids and not specs[inp.name].vocab:
            raise InputSpecError(
                f"input {inp.name!r} is an integer ({inp.dtype}) input of unknown range",
                f"give its vocabulary size: --input-spec {inp.name}:ids:VOCAB",
            )
    return specs


_POSITIVE_USES = {
    ("BatchNormalization", 4): "BatchNormalization var",
    ("Sqrt", 0): "Sqrt input",
    ("Log", 0): "Log input",
    ("Reciprocal", 0): "Reciprocal input",
}


def _from_model(loaded: LoadedModel, spec: InputSpec) -> SampleSpec:
    """bool or *mask* integer -> mask; other integers -> ids (vocab from a Gather table it indexes, ONNX);
    an ONNX input consumed as BatchNormalization var / Sqrt / Log / Reciprocal input -> positive; else normal."""
    dtype = np.dtype(spec.dtype)
    if dtype == np.bool_ or ("mask" in spec.name.lower() and not np.issubdtype(dtype, np.floating)):
        return SampleSpec(SampleKind.mask, why="bool input" if dtype == np.bool_ else "integer input named *mask*")
    graph = loaded.onnx_model.graph if loaded.onnx_model is not None else None
    if np.issubdtype(dtype, np.integer):
        return SampleSpec(SampleKind.ids, vocab=_gather_vocab(graph, spec.name), why="integer input")
    for node in graph.node if graph is not None else ():
        for index, name in enumerate(node.input):
            why = _POSITIVE_USES.get((node.op_type, index))
            if name == spec.name and why:
                return SampleSpec(SampleKind.positive, why=f"consumed as {why}")
    return SampleSpec()


def _gather_vocab(graph, name: str) -> int:
    """Rows of the constant table a Gather indexes with this input (an embedding's vocabulary), else 0."""
    if graph is None:
        return 0
    tables = {t.name: t.dims for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == name and node.input[0] in tables:
            return int(tables[node.input[0]][0]) if tables[node.input[0]] else 0
    return 0


def make_samples(
    inputs: tuple[InputSpec, ...], count: int, specs: dict[str, SampleSpec] | None = None
) -> dict[str, np.ndarray]:
    """Seeded samples, one batch per sample: {name: [count, *shape]}. Inputs without a spec are standard normal
    (the same draws as before specs existed, so default builds see the same inputs)."""
    check_sample_size(inputs, count)
    rng = np.random.default_rng(SEED)
    samples = {}
    for spec in inputs:
        sample = (specs or {}).get(spec.name, SampleSpec())
        dims, dtype = (count, *spec.shape), np.dtype(spec.dtype)
        if sample.kind is SampleKind.normal and not np.issubdtype(dtype, np.floating):
            raise ModelLoadError(
                f"input {spec.name!r} has dtype {spec.dtype}; standard-normal samples need a float input",
                f"give it a range: --input-spec {spec.name}:ids:VOCAB or :mask",
            )
        if sample.kind is SampleKind.normal:
            array = rng.standard_normal(dims)
        elif sample.kind is SampleKind.uniform:
            array = rng.uniform(sample.low, sample.high, dims)
        elif sample.kind is SampleKind.positive:
            array = rng.uniform(0.1, 2.0, dims)
        elif sample.kind is SampleKind.ids:
            array = rng.integers(0, sample.vocab, dims)
        else:
            array = rng.integers(0, 2, dims)
        samples[spec.name] = array.astype(dtype)
    return samples


def samples_source(specs: dict[str, SampleSpec]) -> str:
    """How the seeded inputs were drawn, for the manifest ('seeded standard normal' when nothing else applies)."""
    if all(spec.kind is SampleKind.normal for spec in specs.values()):
        return "seeded standard normal"
    return "seeded: " + ", ".join(f"{name} {spec.describe()}" for name, spec in specs.items())


def check_finite_reference(
    reference: list[np.ndarray], loaded: LoadedModel, inputs: tuple[InputSpec, ...], specs: dict[str, SampleSpec]
) -> None:
    """Refuse seeded inputs that make the reference itself NaN (the gate would fail the build for the inputs),
    naming the inputs the model wants positive but got otherwise, else every input drawn as noise. An infinite
    reference is refused too: no gate can judge against it (NaN and inf compare false, so it would pass)."""
    _check_no_inf(reference, loaded)
    if not any(np.issubdtype(r.dtype, np.floating) and np.isnan(r).any() for r in reference):
        return
    hints = {spec.name: _from_model(loaded, spec) for spec in inputs}
    suspects = [
        n for n, spec in specs.items() if hints[n].kind is SampleKind.positive and spec.kind is not SampleKind.positive
    ]
    suspects = suspects or [n for n, spec in specs.items() if spec.kind in (SampleKind.normal, SampleKind.uniform)]
    suspects = suspects or list(specs)
    named = "; ".join(
        f"{n} drawn as {specs[n].describe()}" + (f", but it is {hints[n].why}" if hints[n].why else "")
        for n in suspects
    )
    raise InputSpecError(
        f"validation inputs produced NaN in the reference ({named})",
        f"give the input its real range with --input-spec, e.g. --input-spec {suspects[0]}:positive "
        f"({INPUT_SPEC_HELP})",
    )


def _check_no_inf(reference: list[np.ndarray], loaded: LoadedModel) -> None:
    for index, out in enumerate(reference):
        if np.issubdtype(out.dtype, np.floating) and np.isinf(out).any():
            who = "PyTorch" if loaded.is_torch else "ONNX Runtime"
            raise InputSpecError(
                f"the {who} reference produced inf on the validation inputs (output {index}: "
                f"{int(np.isinf(out).sum())} of {out.size} values): no numerics gate can judge against it",
                "check the model for overflow (exp or division of large values), or give the inputs their real "
                "range with --input-spec NAME:uniform:LO:HI",
            )


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
            raise _forward_error(exc, " and ".join(_fmt(a.shape) for a in arrays)) from None
        return [t.detach().float().numpy() if t.is_floating_point() else t.numpy() for t in _flatten(result)]

    return run


_SHAPE_WORDS = re.compile(r"shape|size|dimension|channels|mat1 and mat2|must match|broadcast|expected input", re.I)


def _forward_error(exc: Exception, shapes: str) -> ModelLoadError:
    """A shape mismatch is blamed on the shape; anything else the model's forward raised is reported as that
    (TorchScript wraps it: its last line holds the model's own exception)."""
    kind, text = type(exc).__name__, first_line(exc)
    if text.startswith("The following operation failed in the TorchScript interpreter"):
        last = [line for line in str(exc).splitlines() if line.strip()][-1].strip()
        kind, _, text = last.partition(": ")
        kind = kind.removeprefix("builtins.")
    if kind == "RuntimeError" and _SHAPE_WORDS.search(text):
        return ModelLoadError(
            f"input shape {shapes} does not fit the model: {text}",
            "pass the shape the model was built for with --input-shape",
        )
    return ModelLoadError(
        f"the model's forward raised {kind} on the validation inputs (shape {shapes}): {text}",
        "the error comes from the model's own code: fix it, or check the inputs it expects (--input-shape, "
        "--input-spec)",
    )


_IR_VERSION = re.compile(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)")


def _onnx_runner(loaded: LoadedModel):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(
            loaded.onnx_model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        ir = _IR_VERSION.search(str(exc))
        if ir:
            raise ModelLoadError(
                f"{loaded.source} is saved at ONNX IR version {ir[1]}; ONNX Runtime {ort.__version__} reads IR "
                f"versions up to {ir[2]}",
                f"re-save it at IR version {ir[2]} (model.ir_version = {ir[2]}; onnx.save(model, path)), or export "
                "it with the onnx release that matches this ONNX Runtime",
            ) from None
        raise ModelLoadError(
            f"ONNX Runtime cannot run {loaded.source} as given: {first_line(exc)}",
            "check the model with onnx.checker and onnxruntime first",
        ) from None
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
