"""Image features of labelled evaluation sets, with an on-disk cache shared by all protocols.

The images are encoded by the one inference layer (:func:`cliplab.inference.encode_images`, which
search uses too); this module adds the labels and the cache.

Features are computed once per (model weights, dataset samples, preprocessing) and stored as a
safetensors file (plain tensors + string metadata: nothing is unpickled when reading it back). The
file name is that triple's fingerprint, so zero-shot and linear-probe runs over the same test set
with the same model read the same file, and any change to the weights, the file list (or a file's
size or mtime) or the transform gives a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..fileio import atomic_write

# SkippedImage, default_workers and model_fingerprint live in cliplab.inference; re-exported for old imports.
from ..inference import SkippedImage, default_workers, encode_images, model_fingerprint  # noqa: F401
from ..transforms import ImageLoadError
from ..zeroshot.classifier import model_device

CACHE_FORMAT = "cliplab-features-v1"


class ImageFeatures(NamedTuple):
    """Features [N, D] (float32, unit rows), labels [N] (int64), and the images that were skipped."""

    features: torch.Tensor
    labels: torch.Tensor
    skipped: list[SkippedImage]


def dataset_fingerprint(dataset: Any) -> str:
    """The dataset's own ``fingerprint()`` (cliplab datasets hash their file list and transform)."""
    if not hasattr(dataset, "fingerprint"):
        raise TypeError(
            f"{type(dataset).__name__} has no fingerprint(); caching needs one (use a cliplab.evaluation.datasets "
            "dataset, or pass cache_path=None)"
        )
    return dataset.fingerprint()


def cache_key(model: torch.nn.Module, dataset: Any) -> str:
    """The cache key of ``model`` applied to ``dataset`` (its transform included)."""
    text = f"{CACHE_FORMAT}\n{model_fingerprint(model)}\n{dataset_fingerprint(dataset)}"
    return hashlib.sha256(text.encode()).hexdigest()


def cache_file(cache_path: str | os.PathLike, dataset: Any) -> Path:
    """The cache file: ``cache_path`` itself when it ends in .pt/.safetensors and is not a directory, else
    ``cache_path/images-<dataset fingerprint>.pt`` (the name ``linear_probe.feature_cache_path``
    uses too, so every protocol shares one file per split). The content is safetensors either way,
    and it records the full key, so a file written by another model is recomputed, never reused.
    """
    path = Path(cache_path)
    # Only these suffixes mean "a file": a cache folder such as "runs/vit.b32" must stay a folder.
    if path.suffix in (".pt", ".safetensors") and not path.is_dir():
        return path
    return path / f"images-{dataset_fingerprint(dataset)[:20]}.pt"


class _DatasetImages:
    """A labelled evaluation dataset seen as a label-free image collection (labels are read afterwards).

    ``load`` returns the dataset's own transformed tensor, so its transform is the preprocessing.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, index: int) -> torch.Tensor:
        if hasattr(self.dataset, "get"):  # cliplab datasets raise ImageLoadError naming the file
            return self.dataset.get(index)[0]
        item = self.dataset[index]
        if item is None:
            raise ImageLoadError("unreadable image")
        return item[0]

    def source(self, index: int) -> str:
        return self.dataset.source(index) if hasattr(self.dataset, "source") else f"sample {index}"


def _labels(dataset: Any, indices: list[int]) -> torch.Tensor:
    if hasattr(dataset, "labels"):
        return torch.tensor([int(dataset.labels[i]) for i in indices], dtype=torch.long)
    return torch.tensor([int(dataset[i][1]) for i in indices], dtype=torch.long)  # a foreign dataset


def _compute(
    model, dataset, batch_size: int, workers: int, device: torch.device, progress: bool
) -> ImageFeatures:
    out = encode_images(
        model,
        _DatasetImages(dataset),
        batch_size=batch_size,
        workers=workers,
        device=device,
        progress=progress,
    )
    if not len(out.indices):
        first = out.skipped[0].reason if out.skipped else "-"
        raise ValueError(f"none of the {len(dataset)} images could be read (first: {first})")
    return ImageFeatures(out.features, _labels(dataset, out.indices.tolist()), out.skipped)


def save_features(path: str | os.PathLike, result: ImageFeatures, key: str) -> None:
    """Write ``result`` to ``path`` (safetensors) atomically, tagged with ``key``."""
    from safetensors.torch import save_file

    meta = {"format": CACHE_FORMAT, "key": key, "skipped": json.dumps([list(s) for s in result.skipped])}
    tensors = {"features": result.features.contiguous(), "labels": result.labels.contiguous()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_features(path: str | os.PathLike, key: str | None = None) -> ImageFeatures | None:
    """Read a cache file; ``None`` if it is missing, unreadable, or was written for another ``key``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != CACHE_FORMAT or (key is not None and meta.get("key") != key):
                return None
            features, labels = f.get_tensor("features"), f.get_tensor("labels")
        skipped = [SkippedImage(int(i), str(s), str(r)) for i, s, r in json.loads(meta.get("skipped", "[]"))]
    except Exception:  # a truncated or foreign file is recomputed, not fatal
        return None
    return ImageFeatures(features, labels, skipped)


def extract_image_features(
    model: torch.nn.Module,
    dataset: Any,
    *,
    batch_size: int = 256,
    workers: int | None = None,
    device: str | torch.device | None = None,
    cache_path: str | os.PathLike | None = None,
    progress: bool = True,
) -> ImageFeatures:
    """Image features of every readable image of ``dataset``, in dataset order.

    Returns ``(features [N, D] float32 with unit rows, labels [N], skipped)`` where ``skipped`` lists
    the unreadable images (index, file, reason) and N = len(dataset) - len(skipped). Runs under
    ``torch.inference_mode`` in batches of ``batch_size``, loading images with ``workers``
    DataLoader processes (default: all cores; 0 loads in this process). ``device`` defaults to the
    model's. The model's train/eval mode is left alone: a model in training mode with BatchNorm or
    dropout is refused (``cliplab.inference.TrainingModeError``). With ``cache_path`` (a directory,
    or a file; see :func:`cache_file`) results are read from and written to disk under a key of the
    model weights, the dataset's samples and its transform.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = model_device(model, device)
    workers = default_workers() if workers is None else workers
    if cache_path is None:
        return _compute(model, dataset, batch_size, workers, device, progress)
    key = cache_key(model, dataset)
    path = cache_file(cache_path, dataset)
    cached = load_features(path, key)
    if cached is not None:
        return cached
    result = _compute(model, dataset, batch_size, workers, device, progress)
    save_features(path, result, key)
    return result
