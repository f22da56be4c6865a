"""Calibration data for INT8 post-training quantization.

--calib PATH -> load_calibration(path, input shapes, preprocessing)
             -> CalibrationData({input: [N, ...]}, source, warning)
  a folder of images : PIL -> RGB/L -> resize (direct, or short side + centre crop) -> /255 -> (x - mean) / std -> NCHW
  a .npy / .npz      : arrays of model inputs, N samples stacked on the batch axis (one sample may omit it)
  nothing            : seeded standard-normal inputs, and a loud `warning` for the manifest
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vdeploy.errors import VdeployError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif"})
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_LIMIT = 256
RANDOM_SAMPLES = 32
RANDOM_WARNING = (
    "no calibration data given: INT8 ranges were computed from seeded random inputs, so the INT8 "
    "accuracy is not representative of real data; pass --calib with a folder of images or a .npy/.npz"
)

Shape = Sequence[int | str | None]  # a model input shape; str/None/<=0 for dynamic dimensions


class CalibrationError(VdeployError):
    kind = "calibration"


@dataclass(frozen=True)
class Preprocessing:
    """How images become model inputs: the model's recorded preprocessing, or --mean/--std."""

    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    crop_pct: float | None = None  # None: resize straight to HxW; else resize short side to H/crop_pct, centre-crop
    source: str = "imagenet defaults"  # where the numbers came from, for the manifest

    def to_dict(self) -> dict:
        resize = (
            "bilinear, straight to the input HxW"
            if self.crop_pct is None
            else f"bicubic, short side to H/{self.crop_pct}, centre crop to HxW"
        )
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "crop_pct": self.crop_pct,
            "source": self.source,
            "resize": resize,
            "scale": "pixels / 255, then (x - mean) / std",
            "layout": "NCHW, RGB (or L)",
        }


@dataclass(frozen=True)
class CalibrationData:
    """Model inputs for calibration: name -> array of N samples stacked on axis 0 (the batch axis)."""

    inputs: Mapping[str, np.ndarray]
    source: str  # what the data is, for the manifest ("images: DIR (n files)", "npz: PATH", "random (seed 0)")
    warning: str | None = None  # set when the data cannot represent real inputs (random)
    preprocessing: dict | None = field(default=None)  # Preprocessing.to_dict() for image folders

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def batches(self, batch_size: int = 1) -> Iterator[dict[str, np.ndarray]]:
        """Feeds of `batch_size` samples each (a last, shorter batch is dropped unless it is the only one)."""
        n = len(self)
        stop = max(n - n % batch_size, min(n, batch_size))
        for start in range(0, stop, batch_size):
            yield {name: array[start : start + batch_size] for name, array in self.inputs.items()}

    def head(self, n: int) -> CalibrationData:
        return self.rows(0, n)

    def rows(self, start: int, stop: int) -> CalibrationData:
        return CalibrationData(
            {k: v[start:stop] for k, v in self.inputs.items()}, self.source, self.warning, self.preprocessing
        )

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "samples": len(self),
            "warning": self.warning,
            "preprocessing": self.preprocessing,
        }


def input_shapes(model) -> dict[str, tuple]:
    """Graph input name -> shape (ints; None for dynamic dims) of an onnx.ModelProto, initializers left out."""
    inits = {t.name for t in model.graph.initializer}
    shapes = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims)
    return shapes


def load_calibration(
    path: str | Path | None,
    shapes: Mapping[str, Shape],
    *,
    preprocessing: Preprocessing | None = None,
    limit: int = DEFAULT_LIMIT,
    seed: int = 0,
) -> CalibrationData:
    """Read --calib PATH (a folder of images, a .npy or .npz; None for seeded random data) for a model whose
    inputs have these shapes. At most `limit` samples are kept."""
    shapes = {name: _dims(shape) for name, shape in shapes.items()}
    if not shapes:
        raise CalibrationError("the model has no inputs to calibrate", "check the model")
    if path is None:
        return random_calibration(shapes, samples=min(limit, RANDOM_SAMPLES), seed=seed)
    path = Path(path)
    if path.is_dir():
        return _images(path, shapes, preprocessing or Preprocessing(), limit)
    if path.suffix == ".npy" and path.is_file():
        name, shape = _single_input(shapes, "a .npy file")
        return CalibrationData({name: _samples(np.load(path), shape, name, path)[:limit]}, f"npy: {path}")
    if path.suffix == ".npz" and path.is_file():
        with np.load(path) as archive:
            arrays = {key: archive[key] for key in archive.files}
        return CalibrationData(_match_npz(arrays, shapes, path, limit), f"npz: {path}")
    raise CalibrationError(
        f"calibration path {path} is not a folder of images, a .npy or a .npz file",
        "pass --calib DIR (images), --calib FILE.npy or --calib FILE.npz",
    )


def random_calibration(shapes: Mapping[str, Shape], samples: int = RANDOM_SAMPLES, seed: int = 0) -> CalibrationData:
    """Seeded standard-normal samples (what normalised images look like, roughly), with the warning set."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for name, shape in shapes.items():
        shape = _dims(shape)
        batch = shape[0] or 1
        rest = tuple(d or 1 for d in shape[1:])
        inputs[name] = rng.standard_normal((samples * batch, *rest)).astype(np.float32)
    return CalibrationData(inputs, f"random (seed {seed})", RANDOM_WARNING)


def _dims(shape: Shape) -> tuple[int | None, ...]:
    return tuple(d if isinstance(d, (int, np.integer)) and d > 0 else None for d in shape)


def _single_input(shapes: Mapping[str, Shape], what: str) -> tuple[str, Shape]:
    if len(shapes) != 1:
        raise CalibrationError(
            f"{what} can only calibrate a model with one input; this one has {len(shapes)}",
            f"pass a .npz with one array per input: {', '.join(shapes)}",
        )
    return next(iter(shapes.items()))


def _samples(array: np.ndarray, shape: Shape, name: str, path: Path) -> np.ndarray:
    """Arrays stacked on the batch axis ([N, ...]); a single sample without its batch axis gains one."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == len(shape) - 1:
        array = array[None]
    fixed = [(i, d) for i, d in enumerate(shape) if d is not None and i > 0]
    if array.ndim != len(shape) or any(array.shape[i] != d for i, d in fixed):
        want = "x".join("N" if i == 0 else str(d or "?") for i, d in enumerate(shape))
        raise CalibrationError(
            f"calibration array for input {name!r} in {path} has shape {array.shape}; the model wants {want}",
            "save arrays shaped like the model input, samples first",
        )
    if len(array) == 0:
        raise CalibrationError(f"calibration array for input {name!r} in {path} is empty", "add samples")
    return array


def _match_npz(arrays: dict, shapes: Mapping[str, Shape], path: Path, limit: int) -> dict[str, np.ndarray]:
    if len(shapes) == 1 and len(arrays) == 1:
        name, shape = next(iter(shapes.items()))
        return {name: _samples(next(iter(arrays.values())), shape, name, path)[:limit]}
    missing = [name for name in shapes if name not in arrays]
    if missing:
        raise CalibrationError(
            f"{path} has no array for input(s) {', '.join(missing)} (it has: {', '.join(arrays) or 'nothing'})",
            "name the arrays after the model inputs",
        )
    out = {name: _samples(arrays[name], shape, name, path)[:limit] for name, shape in shapes.items()}
    if len({len(a) for a in out.values()}) != 1:
        raise CalibrationError(
            f"the arrays in {path} hold different numbers of samples", "give every input the same number of samples"
        )
    return out


def _images(folder: Path, shapes: Mapping[str, Shape], prep: Preprocessing, limit: int) -> CalibrationData:
    from PIL import Image

    name, shape = _single_input(shapes, "a folder of images")
    channels, height, width = (shape[1], shape[2], shape[3]) if len(shape) == 4 else (None, None, None)
    if channels not in (1, 3) or not isinstance(height, int) or not isinstance(width, int) or min(height, width) <= 0:
        raise CalibrationError(
            f"input {name!r} has shape {shape}, not NCHW with 1 or 3 channels and a fixed size",
            "pass --calib with a .npy/.npz of ready-made input tensors instead",
        )
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())[:limit]
    if not files:
        raise CalibrationError(
            f"no images in {folder} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})",
            "point --calib at a folder of images, or at a .npy/.npz",
        )
    mean = _per_channel(prep.mean, channels, "mean")
    std = _per_channel(prep.std, channels, "std")
    batch = []
    for file in files:
        try:
            with Image.open(file) as opened:
                image = _resize(opened.convert("RGB" if channels == 3 else "L"), height, width, prep.crop_pct)
        except OSError as exc:
            raise CalibrationError(f"cannot read image {file}: {exc}", "remove or replace the file") from None
        pixels = np.asarray(image, dtype=np.float32).reshape(height, width, channels) / 255.0
        batch.append(((pixels - mean) / std).transpose(2, 0, 1))
    data = np.stack(batch).astype(np.float32)
    per_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else 1
    data = data[: len(data) - len(data) % per_batch] if len(data) >= per_batch else data
    return CalibrationData({name: data}, f"images: {folder} ({len(files)} files)", None, prep.to_dict())


def _per_channel(values: Sequence[float], channels: int, what: str) -> np.ndarray:
    values = tuple(values)
    if len(values) == channels:
        return np.asarray(values, dtype=np.float32)
    if len(values) == 1:
        return np.full(channels, values[0], dtype=np.float32)
    if channels == 1:  # a grey model with RGB statistics: use their mean
        return np.asarray([sum(values) / len(values)], dtype=np.float32)
    raise CalibrationError(
        f"--{what} has {len(values)} values; the model has {channels} channels", f"pass one value or {channels} values"
    )


def _resize(image, height: int, width: int, crop_pct: float | None):
    from PIL import Image

    if crop_pct is None:
        return image.resize((width, height), Image.Resampling.BILINEAR)
    scale = max(height, width) / crop_pct / min(image.size)
    resized = image.resize(
        (max(width, round(image.size[0] * scale)), max(height, round(image.size[1] * scale))), Image.Resampling.BICUBIC
    )
    left, top = (resized.size[0] - width) // 2, (resized.size[1] - height) // 2
    return resized.crop((left, top, left + width, top + height))
