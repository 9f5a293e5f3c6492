"""What every training source shares: its settings, per-sample decoding, batches and the loader.

``DataConfig`` says where samples come from. ``SampleMaker`` turns one raw sample (a way to open
its image, a caption) into a ``Decoded`` sample or a ``SkipRecord``; ``Collate`` stacks those into
a ``Batch``, with the records of the skipped samples and of those a substitute replaced
(``Decoded.replaces``); ``TrainLoader`` yields one epoch of batches and counts the skips. The
map-style sources (``cliplab.data.loader``) and the WebDataset stream (``cliplab.data.wds``) both
build on this module and import nothing of each other at module level, so there is no import cycle.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice

import torch
from PIL import Image
from torch.utils.data import DataLoader

from ..errors import UsageError
from ..transforms import ImageLoadError, load_image

# The logger every source reports skipped samples to (named for the user-facing loader module).
logger = logging.getLogger("cliplab.data.loader")

SOURCES = ("synthetic", "manifest", "webdataset")
# Only the first few skips are logged as warnings; the rest go to debug (all are counted).
MAX_SKIP_WARNINGS = 20


@dataclass
class DataConfig:
    """Where training samples come from; validated on construction.

    ``path`` is the manifest file (source="manifest") or the shards (source="webdataset"): a
    directory of ``*.tar`` files, a brace pattern such as ``data/shard-{000000..000009}.tar``, or a
    list of shard paths. ``image_key``/``caption_key`` name the manifest columns (JSON keys); left
    as None, the first of ``IMAGE_COLUMNS`` ("filepath", "path", "image") and of
    ``CAPTION_COLUMNS`` ("caption", "text") that the file has is used. For WebDataset,
    ``caption_key`` is the key read from a sample's ``.json`` member when it has no ``.txt``
    (default: the first of ``CAPTION_COLUMNS`` present). ``num_samples`` (samples per epoch) and
    ``resampled`` (draw shards with replacement, an endless stream) apply to WebDataset only;
    without ``resampled`` an epoch is one pass over the shards, so ``num_samples`` can shorten it
    but not lengthen it. ``shuffle_buffer`` is the WebDataset sample shuffle buffer. The synthetic
    source reads no files, so ``path`` must be unset for it.

    ``reduced_decode`` (on by default) lets the training transform decode a JPEG at 1/2, 1/4 or 1/8
    scale inside the JPEG decoder when its random crop is still at least twice the output side
    after the reduction (``TrainTransform.decode``): the crop covers the same part of the picture,
    the pixels differ from a full decode by about a quarter of a grey level on average, and small
    models trained from large photos decode 2-3x faster. Set it to false for pixels identical to
    decoding in full. It applies to files the loader opens itself (manifests); evaluation always
    decodes in full.
    """

    source: str = "synthetic"
    path: str | list[str] | None = None
    image_key: str | None = None
    caption_key: str | None = None
    synthetic_size: int = 100_000
    synthetic_seed: int = 0
    synthetic_cache: bool = False  # render the synthetic set once into memory; epochs re-augment it
    num_samples: int | None = None
    resampled: bool = False
    workers: int = 2
    shuffle_buffer: int = 1000
    reduced_decode: bool = True

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise UsageError(f"DataConfig.source={self.source!r} is unknown; use one of {list(SOURCES)}")
        if isinstance(self.path, os.PathLike):
            self.path = os.fspath(self.path)
        elif isinstance(self.path, (list, tuple)):
            self.path = [os.fspath(p) for p in self.path]
        if self.source == "synthetic" and self.path:
            raise UsageError(
                f"DataConfig.path (data.path) is {self.path!r} but DataConfig.source (data.source) is "
                "'synthetic', which reads no files; set data.source to 'manifest' or 'webdataset', or unset data.path"
            )
        if self.source != "synthetic" and not self.path:
            what = (
                "a manifest file" if self.source == "manifest" else "a shard directory, brace pattern or list"
            )
            raise UsageError(f"DataConfig.path is required for source={self.source!r}: give {what}")
        if self.source == "manifest" and not isinstance(self.path, str):
            raise UsageError(
                f"DataConfig.path must be one manifest file for source='manifest', got {self.path!r}"
            )
        for name in ("image_key", "caption_key"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise UsageError(
                    f"DataConfig.{name} must be a non-empty string, or null for the default columns, got {value!r}"
                )
        _check_int("synthetic_size", self.synthetic_size, 1)
        _check_int("synthetic_seed", self.synthetic_seed, None)
        _check_int("workers", self.workers, 0)
        _check_int("shuffle_buffer", self.shuffle_buffer, 0)
        if not isinstance(self.reduced_decode, bool):
            raise UsageError(f"DataConfig.reduced_decode must be true or false, got {self.reduced_decode!r}")
        if self.num_samples is not None:
            _check_int("num_samples", self.num_samples, 1)
        if self.source != "webdataset" and (self.num_samples is not None or self.resampled):
            raise UsageError(
                "DataConfig.num_samples and DataConfig.resampled apply only to source='webdataset'; "
                f"unset them for source={self.source!r}"
            )


def _check_int(name: str, value: object, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = "an int" if minimum is None else f"an int >= {minimum}"
        raise UsageError(f"DataConfig.{name} must be {bound}, got {value!r}")


@dataclass
class SkipRecord:
    """A sample that was not used: ``source`` is its file path (or ``shard:key``), ``reason`` why.

    Reasons start with a fixed kind ("missing file", "empty caption", "unreadable image", ...),
    optionally followed by ": details"; ``kind`` returns that prefix for counting.
    """

    source: str
    reason: str

    @property
    def kind(self) -> str:
        return self.reason.split(":", 1)[0]


@dataclass
class Batch:
    """One training batch. ``images`` [B, 3, H, W] float, ``texts`` [B, ctx] token ids, ``indices``
    [B] dataset indices (-1 for WebDataset), ``skipped`` the records of this batch's unusable
    samples, ``position`` the batch's index within the epoch (set by ``TrainLoader``).
    Unusable samples are replaced, so B is the batch size unless replacing failed; then it can be
    smaller, or 0 (see ``cliplab.data.loader``).
    """

    images: torch.Tensor
    texts: torch.Tensor
    indices: torch.Tensor
    skipped: list[SkipRecord] = field(default_factory=list)
    position: int = -1

    def __len__(self) -> int:
        return self.images.shape[0]

    def pin_memory(self) -> Batch:
        # DataLoader(pin_memory=True) calls this; without it the dataclass would pass through unpinned.
        return self._map(lambda t: t.pin_memory())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The batch with its tensors on ``device``."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
        return Batch(fn(self.images), fn(self.texts), fn(self.indices), self.skipped, self.position)


# ---------------------------------------------------------------------------------------------
# Per-sample decoding

_MASK64 = (1 << 64) - 1


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64 over the parts), well spread even for nearby inputs."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h >> 1


def _accepts_generator(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "generator" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


@dataclass(frozen=True)
class EncodedImage:
    """An image not decoded yet: a file path or the encoded bytes, and its name in messages.

    Calling it decodes the whole image (:func:`cliplab.transforms.load_image`; a missing file
    raises ``FileNotFoundError``). ``SampleMaker`` can instead hand ``source`` to a transform with a
    ``decode`` method (``TrainTransform.decode``), which decodes and augments in one go.
    """

    source: str | bytes
    name: str | None = None

    def __call__(self) -> Image.Image:
        self.check_exists()
        return load_image(self.source, name=self.name)

    def check_exists(self) -> None:
        """Raise ``FileNotFoundError`` for a missing file: counted as "missing file", apart from
        unreadable ones."""
        if isinstance(self.source, str) and not os.path.isfile(self.source):
            raise FileNotFoundError(self.source)


@dataclass
class Decoded:
    """A usable sample: image tensor [3, H, W], token ids [ctx], dataset index (-1 if none).

    ``replaces`` is the record of the unusable sample whose place this one takes, if any.
    """

    image: torch.Tensor
    tokens: torch.Tensor
    index: int
    replaces: SkipRecord | None = None


class SampleMaker:
    """Turns (image loader, caption) into a ``Decoded`` sample or a ``SkipRecord``.

    The transform is called as ``transform(img, generator=g)`` with ``g`` seeded per sample; a
    transform without a ``generator`` argument runs under ``torch.random.fork_rng`` with torch's
    global RNG seeded the same way, so it is just as reproducible (for torch draws).

    With ``reduced_decode=True``, an ``EncodedImage`` goes to the transform's ``decode(source,
    generator, name=...)`` when it has one (``TrainTransform.decode``: a reduced-scale JPEG decode,
    the same crop); other images and transforms are decoded in full and then transformed.
    """

    def __init__(
        self, transform: Callable, tokenize: Callable[[list[str]], torch.Tensor], reduced_decode: bool = False
    ) -> None:
        self.transform = transform
        self.tokenize = tokenize
        self.takes_generator = _accepts_generator(transform)
        self.decode = getattr(transform, "decode", None) if reduced_decode and self.takes_generator else None

    def apply_transform(self, img: Image.Image, seed: int) -> torch.Tensor:
        if self.takes_generator:
            return self.transform(img, generator=torch.Generator().manual_seed(seed))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(img)

    def make(
        self, where: str, open_image: Callable[[], Image.Image], caption: str, index: int, seed: int
    ) -> Decoded | SkipRecord:
        if not caption.strip():
            return SkipRecord(where, "empty caption")
        image = None
        try:
            if self.decode is not None and isinstance(open_image, EncodedImage):
                # Decode and augment in one go (a JPEG is decoded only as finely as its crop needs).
                open_image.check_exists()
                generator = torch.Generator().manual_seed(seed)
                image = self.decode(open_image.source, generator, name=open_image.name)
            else:
                img = open_image()
        except FileNotFoundError:
            return SkipRecord(where, "missing file")
        except ImageLoadError as exc:
            return SkipRecord(where, f"unreadable image: {exc.__cause__ or exc}")
        try:
            tokens = self.tokenize([caption])[0]
        except ValueError as exc:  # e.g. a caption over the context length with truncate=False
            return SkipRecord(where, f"bad caption: {exc}")
        if image is not None:
            return Decoded(image, tokens, index)
        # Transform errors on a decoded image are bugs, not bad data: they propagate.
        return Decoded(self.apply_transform(img, seed), tokens, index)

    def empty_shapes(self, image_size: int | None) -> tuple[tuple[int, ...], int]:
        """(image shape, context length) for empty batches, probed once with a blank image."""
        side = image_size or 64
        image_shape = tuple(self.apply_transform(Image.new("RGB", (side, side)), 0).shape)
        return image_shape, int(self.tokenize(["a"]).shape[-1])


class Collate:
    """Stacks decoded samples into a ``Batch`` and gathers the skip records (runs in workers)."""

    def __init__(self, image_shape: tuple[int, ...], context_length: int) -> None:
        self.image_shape = image_shape
        self.context_length = context_length

    def __call__(self, items: Iterable[Decoded | SkipRecord]) -> Batch:
        items = list(items)
        good = [x for x in items if isinstance(x, Decoded)]
        skipped = [x if isinstance(x, SkipRecord) else x.replaces for x in items]
        skipped = [x for x in skipped if x is not None]
        if not good:
            return Batch(
                torch.empty((0, *self.image_shape)),
                torch.empty((0, self.context_length), dtype=torch.long),
                torch.empty(0, dtype=torch.long),
                skipped,
            )
        images = torch.stack([x.image for x in good])
        texts = torch.stack([x.tokens for x in good]).long()
        return Batch(images, texts, torch.tensor([x.index for x in good], dtype=torch.long), skipped)


# ---------------------------------------------------------------------------------------------
# One epoch


class TrainLoader:
    """One epoch of ``Batch`` objects for one rank.

    ``num_batches`` is the epoch's length for this rank; iteration yields batches
    ``start_batch .. num_batches - 1`` (``len()`` is that count). Skips seen while iterating are
    counted in ``skip_counts`` (by kind) and logged to the ``cliplab.data.loader`` logger.
    """

    def __init__(self, loader: DataLoader, num_batches: int, start_batch: int, skip_leading: bool) -> None:
        self.loader = loader
        self.num_batches = num_batches
        self.start_batch = start_batch
        # Streams cannot seek, so they decode and drop the first start_batch batches.
        self._skip_leading = skip_leading
        self.skip_counts: Counter[str] = Counter()

    @property
    def num_skipped(self) -> int:
        return sum(self.skip_counts.values())

    def __len__(self) -> int:
        return self.num_batches - self.start_batch

    def __iter__(self) -> Iterator[Batch]:
        batches: Iterator[Batch] = iter(self.loader)
        if self._skip_leading:
            batches = islice(batches, self.start_batch, self.num_batches)
        for position, batch in enumerate(batches, start=self.start_batch):
            batch.position = position
            self._record(batch.skipped)
            yield batch

    def _record(self, records: list[SkipRecord]) -> None:
        for r in records:
            level = logging.WARNING if self.num_skipped < MAX_SKIP_WARNINGS else logging.DEBUG
            logger.log(level, "skipped training sample %s: %s", r.source, r.reason)
            self.skip_counts[r.kind] += 1


def loader_kwargs(workers: int, seed: int, epoch: int, rank: int, pin_memory: bool) -> dict:
    """DataLoader settings shared by all sources; ``pin_memory`` for batches bound for a CUDA device."""
    return dict(
        num_workers=workers,
        persistent_workers=False,
        pin_memory=pin_memory,
        # An explicit generator: DataLoader otherwise draws worker seeds from torch's global RNG,
        # which would shift the training loop's own random stream.
        generator=torch.Generator().manual_seed(mix_seed(seed, epoch, rank, 1)),
    )


def check_start_batch(start_batch: int, num_batches: int) -> None:
    """Refuse a resume position past the end of the epoch."""
    if start_batch > num_batches:
        raise UsageError(
            f"start_batch={start_batch} is past the end of the epoch ({num_batches} batches per rank); "
            "resume at the next epoch with start_batch=0"
        )
