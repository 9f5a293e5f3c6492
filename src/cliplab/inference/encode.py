"""The one inference layer: images and texts in, L2-normalised float32 embeddings out.

Evaluation (zero-shot, linear probe, retrieval) and search (``cliplab embed``, ``search``, ``serve``)
all encode through these functions, so a collection embedded for search and a test set scored by
an evaluation see exactly the same preprocessing, batching and normalisation.

* :func:`image_batches` streams an image collection (see :mod:`cliplab.inference.sources`) through
  a DataLoader (``workers`` processes decode and preprocess while the model runs) and yields each
  batch's embeddings with the collection indices they belong to, the images' original sizes and the
  images that could not be read (skipped, never fatal). :func:`encode_images` collects them.
* :func:`encode_texts` tokenizes (truncating to the model's context) and encodes in batches.

Model mode. These functions never call ``model.eval()`` or ``model.train()``: flipping a shared
model's mode would race with anything else using it (a training step, another request of a
server). They run under ``torch.inference_mode`` in whatever mode the caller set, and refuse a model
in training mode whose output depends on the mode (BatchNorm, dropout), naming the fix. Many
threads may encode with one model at the same time.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ..errors import UsageError
from ..transforms import ImageLoadError
from ..zeroshot.classifier import model_device

Transform = Callable[[Image.Image], torch.Tensor]


class SkippedImage(NamedTuple):
    """An image left out: its index in the collection, its file (or key), and why."""

    index: int
    source: str
    reason: str


class ImageBatch(NamedTuple):
    """One batch of :func:`image_batches`: rows of ``features`` belong to collection ``indices``.

    ``sizes`` are the images' (width, height) before preprocessing ((-1, -1) when the collection
    handed over a ready tensor); ``skipped`` are the batch's unreadable images.
    """

    indices: list[int]
    features: torch.Tensor
    sizes: list[tuple[int, int]]
    skipped: list[SkippedImage]


class EncodedImages(NamedTuple):
    """Features [N, D] (float32, unit rows) of the collection ``indices`` [N] that loaded, and the rest."""

    features: torch.Tensor
    indices: torch.Tensor
    skipped: list[SkippedImage]


class TrainingModeError(UsageError):
    """A model in training mode would give batch-dependent embeddings; the caller must set eval mode."""


def default_workers() -> int:
    """DataLoader workers when none are given: every core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def model_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over the model's state dict (names, dtypes, shapes and bytes): the model's identity."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


_MODE_DEPENDENT = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.dropout._DropoutNd)


def check_inference_mode(model: torch.nn.Module) -> None:
    """Refuse a model in training mode whose outputs would depend on it (BatchNorm, dropout).

    Such a model would normalise each batch by its own statistics (so an image's embedding would
    depend on its batch-mates) and update its running averages. A model without such layers (the
    ViTs) gives the same output in either mode and is accepted as it is.
    """
    if not model.training:
        return
    for name, module in model.named_modules():
        active = isinstance(module, _MODE_DEPENDENT) and not (
            isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p == 0
        )
        if active and module.training:
            raise TrainingModeError(
                f"the model is in training mode and its {type(module).__name__} layer {name!r} would make "
                "embeddings depend on the batch; call model.eval() before encoding (cliplab.load returns "
                "models in eval mode)"
            )


class _Items(torch.utils.data.Dataset):
    """Collection index -> ``(index, tensor or None, (width, height), reason)``; never raises for bad images."""

    def __init__(self, images: Any, preprocess: Transform | None) -> None:
        self.images, self.preprocess = images, preprocess

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        try:
            image = self.images.load(index)
            if isinstance(image, torch.Tensor):
                return index, image, (-1, -1), ""
            size = image.size
            if self.preprocess is None:
                raise TypeError("the collection gives PIL images: pass preprocess= (cliplab.load returns it)")
            return index, self.preprocess(image), size, ""
        except ImageLoadError as exc:
            return index, None, (-1, -1), str(exc)


def _collate(items):
    good = [it for it in items if it[1] is not None]
    images = torch.stack([it[1] for it in good]) if good else None
    return (
        [it[0] for it in good],
        images,
        [it[2] for it in good],
        [(it[0], it[3]) for it in items if it[1] is None],
    )


def image_batches(
    model: torch.nn.Module,
    images: Any,
    *,
    preprocess: Transform | None = None,
    indices: Iterable[int] | None = None,
    batches: Iterable[Sequence[int]] | None = None,
    batch_size: int = 256,
    workers: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    bar: tqdm | None = None,
    precision: str | None = None,
) -> Iterator[ImageBatch]:
    """Stream ``images`` (all, or the collection ``indices`` in the given order) through the model.

    Yields one :class:`ImageBatch` per ``batch_size`` images with L2-normalised float32 features on
    the CPU; ``batches`` (lists of collection indices) sets the batches explicitly instead. PIL images from the collection are turned into model input by ``preprocess``; images
    are decoded in ``workers`` DataLoader processes (default: all cores; 0 decodes here). ``device``
    defaults to the model's. A progress bar (rate and ETA) is shown unless ``progress`` is False;
    pass ``bar`` to advance an existing one instead.

    ``precision`` (``"auto"``, ``"bfloat16"``, ``"float16"``, ``"float32"``) encodes through a fast
    inference copy of the image tower (:func:`cliplab.inference.fast.prepare_image_encoder`: bfloat16
    where the hardware runs it natively, BatchNorm folded, channels-last ResNets); features stay
    float32, within cosine 0.999 of the plain model's. ``None`` (default) runs the model as it is.
    """
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    check_inference_mode(model)
    device = model_device(model, device)
    encode = model.encode_image
    if precision is not None:
        from .fast import prepare_image_encoder

        encode = prepare_image_encoder(model, precision, device=device).encode_image
    if batches is None:
        order = list(range(len(images))) if indices is None else list(indices)
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches = [list(b) for b in batches if len(b)]
    workers = default_workers() if workers is None else workers
    loader = torch.utils.data.DataLoader(
        _Items(images, preprocess),
        batch_sampler=batches,
        num_workers=min(workers, len(batches)),
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )
    own = bar is None
    if own:
        total = sum(map(len, batches))
        bar = tqdm(total=total, desc="images", unit="img", disable=not progress, dynamic_ncols=True)
    try:
        with torch.inference_mode():
            for kept, batch, sizes, bad in loader:
                skipped = [SkippedImage(i, _source(images, i), reason) for i, reason in bad]
                if batch is None:
                    features = torch.empty(0, _embed_dim(model))
                else:
                    out = encode(batch.to(device, non_blocking=True))
                    features = F.normalize(out.float(), dim=-1).cpu()
                bar.update(len(kept) + len(bad))
                yield ImageBatch(kept, features, sizes, skipped)
    finally:
        if own:
            bar.close()


def _source(images: Any, index: int) -> str:
    return images.source(index) if hasattr(images, "source") else f"image {index}"


def _embed_dim(model: torch.nn.Module) -> int:
    return model.config.embed_dim


def encode_images(model: torch.nn.Module, images: Any, **kwargs) -> EncodedImages:
    """Every readable image of ``images`` encoded, in collection order (see :func:`image_batches`)."""
    feats, kept, skipped = [torch.empty(0, _embed_dim(model))], [], []
    for batch in image_batches(model, images, **kwargs):
        feats.append(batch.features)
        kept += batch.indices
        skipped += batch.skipped
    return EncodedImages(torch.cat(feats), torch.tensor(kept, dtype=torch.long), skipped)


def encode_texts(
    model: torch.nn.Module,
    texts: Sequence[str],
    *,
    tokenize: Callable[..., torch.Tensor] | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """L2-normalised float32 text features [len(texts), D] on the CPU, truncating to the model's context.

    ``tokenize`` defaults to :func:`cliplab.tokenize`; ``device`` to the model's.
    """
    if tokenize is None:
        from ..tokenizer import tokenize
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    check_inference_mode(model)
    device = model_device(model, device)
    context_length = model.config.text.context_length
    chunks = [torch.empty(0, _embed_dim(model))]
    with torch.inference_mode():
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc="texts", unit="batch", disable=not progress or len(starts) < 2):
            tokens = tokenize(
                list(texts[start : start + batch_size]), context_length=context_length, truncate=True
            )
            chunks.append(F.normalize(model.encode_text(tokens.to(device)).float(), dim=-1).cpu())
    return torch.cat(chunks)
