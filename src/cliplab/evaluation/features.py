"""Image features of labelled evaluation sets, with an on-disk cache shared by all protocols.

The images are encoded by the one inference layer (:func:`cliplab.inference.encode_images`, which
search uses too); this module adds the labels and the cache.

Features are computed once per (model weights, dataset samples, preprocessing) and stored as a
safetensors file (plain tensors + string metadata: nothing is unpickled when reading it back). The
file name is that triple's fingerprint, so zero-shot and linear-probe runs over the same test set
with the same model read the same file, and any change to the weights, the file list (or a file's
size or mtime) or the transform gives a new one.

The model's part of the key is the SHA-256 of its weights (``cliplab.inference.model_fingerprint``),
which reads every weight: about 1.5 s for ViT-B/32. :func:`model_identity` computes it once per
model and reuses it while nothing can have changed the weights since. "Nothing changed" is checked
on every call by three cheap signals, each covering what the others miss:

* every parameter and buffer is the same tensor object (held by weak reference: identity, not an
  address that could be reused), with the same data pointer, shape, strides, dtype and device, and
  the same autograd version counter, which every tracked in-place operation increments
  (``load_state_dict``, updates under ``torch.no_grad()``, the foreach optimisers);
* no ``torch.optim`` optimiser has stepped since (a global step hook counts steps): the fused AdamW
  kernel, which the trainer uses by default, updates weights without touching version counters;
* 16 elements of every tensor, at positions drawn at random when the identity was computed, still
  hold the same bits: edits that bypass the version counter (``p.data.add_``, writes through a
  NumPy view) change sampled elements in practice, as a re-initialisation or an update of a whole
  tensor does.

So the trainer's periodic evaluations, which change the weights in place between calls, always get
a fresh key. What escapes all three is a write through ``.data`` or NumPy to a few elements none of
which is sampled, with no optimiser step in between; after such surgery call
:func:`forget_model_identity` (or pass ``cache_path=None``).
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from dataclasses import dataclass
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
    text = f"{CACHE_FORMAT}\n{model_identity(model)}\n{dataset_fingerprint(dataset)}"
    return hashlib.sha256(text.encode()).hexdigest()


_PROBES = 16  # elements sampled per tensor
_optimizer_steps = 0  # steps of any torch.optim optimiser since the hook was installed
_step_hook = None
_PROBE_GENERATOR = torch.Generator().manual_seed(0)


@dataclass
class _Identity:
    fingerprint: str
    steps: int
    tensors: list[tuple[str, weakref.ref, tuple]]
    positions: list[torch.Tensor]
    probe: bytes


_identities: weakref.WeakKeyDictionary[torch.nn.Module, _Identity] = weakref.WeakKeyDictionary()


def model_identity(model: torch.nn.Module) -> str:
    """``model_fingerprint(model)`` (SHA-256 of the weights), recomputed only when they may have changed.

    The first call on a model hashes its weights; later calls cost a walk over its tensors and a
    few sampled elements of each (see the module docstring for what is checked).
    """
    _install_step_hook()
    known = _identities.get(model)
    tensors = _tensors(model)
    if known is not None and _unchanged(known, tensors):
        return known.fingerprint
    steps = _optimizer_steps
    fingerprint = model_fingerprint(model)
    try:
        positions = [_positions(t) for _, t in tensors]
        _identities[model] = _Identity(
            fingerprint,
            steps,
            [(name, weakref.ref(t), _meta(t)) for name, t in tensors],
            positions,
            _probe(tensors, positions),
        )
    except RuntimeError:  # inference-mode tensors have no version counter: nothing to remember by
        _identities.pop(model, None)
    return fingerprint


def forget_model_identity(model: torch.nn.Module) -> None:
    """Make the next :func:`model_identity` of ``model`` hash its weights again."""
    _identities.pop(model, None)


def _install_step_hook() -> None:
    global _step_hook
    if _step_hook is None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        _step_hook = register_optimizer_step_post_hook(_count_step)


def _count_step(optimizer, args, kwargs) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


def _tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    # What model_fingerprint hashes, as the live parameters and buffers rather than detached copies.
    return [(n, t) for n, t in model.state_dict(keep_vars=True).items() if isinstance(t, torch.Tensor)]


def _meta(t: torch.Tensor) -> tuple:
    return (t.data_ptr(), t._version, tuple(t.shape), t.stride(), t.storage_offset(), t.dtype, t.device)


def _positions(t: torch.Tensor) -> torch.Tensor:
    n = t.numel()
    if n <= _PROBES:
        return torch.arange(n, device=t.device)
    # A private generator: drawing from torch's global one would shift a training run's random stream.
    return torch.randint(n, (_PROBES,), generator=_PROBE_GENERATOR).to(t.device)


def _probe(tensors: list[tuple[str, torch.Tensor]], positions: list[torch.Tensor]) -> bytes:
    """The bits of the sampled elements (bits, not values: a NaN equals itself, -0.0 differs from 0.0)."""
    with torch.no_grad():
        parts = [
            torch.take(t.detach(), i).view(torch.uint8).cpu()
            for (_, t), i in zip(tensors, positions, strict=True)
        ]
    return torch.cat(parts).numpy().tobytes() if parts else b""


def _unchanged(known: _Identity, tensors: list[tuple[str, torch.Tensor]]) -> bool:
    if known.steps != _optimizer_steps or len(known.tensors) != len(tensors):
        return False
    try:
        for (name, ref, meta), (now, t) in zip(known.tensors, tensors, strict=True):
            if name != now or ref() is not t or meta != _meta(t):
                return False
    except RuntimeError:  # an inference-mode tensor has no version counter
        return False
    return _probe(tensors, known.positions) == known.probe


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
