"""Training batches from a manifest, WebDataset shards or the synthetic set, behind one interface.

``build_train_loader(cfg, ...)`` returns a ``TrainLoader`` for one epoch on one rank. Iterating it
yields ``Batch`` objects: images, token ids, dataset indices and the ``SkipRecord`` of every sample
in that batch that could not be used.

Map-style sources (``manifest``, ``synthetic``) are exactly reproducible:

* the epoch's order is ``torch.randperm`` from a generator seeded by (seed, epoch); rank ``r`` takes
  the ``r``-th contiguous slice of ``num_batches * batch_size`` indices (the remainder is dropped, so
  every rank runs the same number of batches), cut into consecutive batches;
* augmentation draws come from a generator seeded by (seed, epoch, dataset index), never from a
  worker's global RNG, so batches do not depend on the number of workers;
* ``start_batch=k`` yields batches k, k+1, ... of that epoch without decoding the first k.

WebDataset shards are streamed (see ``cliplab.data.wds``); there ``start_batch`` only skips batches
and a resumed epoch is approximate.

Bad samples never stop training. A missing, unreadable, truncated or non-image file, an empty
caption or a broken tar member becomes a ``SkipRecord`` (where + why). Samples are decoded in
worker processes, so the records travel inside the batch they would have belonged to, and batches
can be smaller than ``batch_size``. A batch whose samples were all skipped is still yielded, as an
EMPTY batch (``len(batch) == 0``) carrying its skip records: the training loop should not step on
it, but counts it as a position in the epoch so ``start_batch`` stays aligned.
"""

from __future__ import annotations

import inspect
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..transforms import ImageLoadError, load_image
from .manifest import read_manifest

logger = logging.getLogger(__name__)

SOURCES = ("synthetic", "manifest", "webdataset")
# Only the first few skips are logged as warnings; the rest go to debug (all are counted).
MAX_SKIP_WARNINGS = 20


@dataclass
class DataConfig:
    """Where training samples come from; validated on construction.

    ``path`` is the manifest file (source="manifest") or the shards (source="webdataset"): a
    directory of ``*.tar`` files, a brace pattern such as ``data/shard-{000000..000009}.tar``, or a
    list of shard paths. ``image_key``/``caption_key`` name the manifest columns (JSON keys); for
    WebDataset, ``caption_key`` is the key read from a sample's ``.json`` member when it has no
    ``.txt``. ``num_samples`` (samples per epoch) and ``resampled`` (draw shards with replacement,
    an endless stream) apply to WebDataset only; ``shuffle_buffer`` is its sample shuffle buffer.
    """

    source: str = "synthetic"
    path: str | list[str] | None = None
    image_key: str = "filepath"
    caption_key: str = "caption"
    synthetic_size: int = 100_000
    synthetic_seed: int = 0
    synthetic_cache: bool = False  # render the synthetic set once into memory; epochs re-augment it
    num_samples: int | None = None
    resampled: bool = False
    workers: int = 2
    shuffle_buffer: int = 1000

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"DataConfig.source={self.source!r} is unknown; use one of {list(SOURCES)}")
        if isinstance(self.path, os.PathLike):
            self.path = os.fspath(self.path)
        elif isinstance(self.path, (list, tuple)):
            self.path = [os.fspath(p) for p in self.path]
        if self.source != "synthetic" and not self.path:
            what = (
                "a manifest file" if self.source == "manifest" else "a shard directory, brace pattern or list"
            )
            raise ValueError(f"DataConfig.path is required for source={self.source!r}: give {what}")
        if self.source == "manifest" and not isinstance(self.path, str):
            raise ValueError(
                f"DataConfig.path must be one manifest file for source='manifest', got {self.path!r}"
            )
        for name in ("image_key", "caption_key"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"DataConfig.{name} must be a non-empty string, got {getattr(self, name)!r}")
        _check_int("synthetic_size", self.synthetic_size, 1)
        _check_int("synthetic_seed", self.synthetic_seed, None)
        _check_int("workers", self.workers, 0)
        _check_int("shuffle_buffer", self.shuffle_buffer, 0)
        if self.num_samples is not None:
            _check_int("num_samples", self.num_samples, 1)
        if self.source != "webdataset" and (self.num_samples is not None or self.resampled):
            raise ValueError(
                "DataConfig.num_samples and DataConfig.resampled apply only to source='webdataset'; "
                f"unset them for source={self.source!r}"
            )


def _check_int(name: str, value: object, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = "an int" if minimum is None else f"an int >= {minimum}"
        raise ValueError(f"DataConfig.{name} must be {bound}, got {value!r}")


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
    B may be smaller than the batch size, or 0 (see the module docstring).
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
# Per-sample decoding, shared with the WebDataset source

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


@dataclass
class Decoded:
    """A usable sample: image tensor [3, H, W], token ids [ctx], dataset index (-1 if none)."""

    image: torch.Tensor
    tokens: torch.Tensor
    index: int


class SampleMaker:
    """Turns (image loader, caption) into a ``Decoded`` sample or a ``SkipRecord``.

    The transform is called as ``transform(img, generator=g)`` with ``g`` seeded per sample; a
    transform without a ``generator`` argument runs under ``torch.random.fork_rng`` with torch's
    global RNG seeded the same way, so it is just as reproducible (for torch draws).
    """

    def __init__(self, transform: Callable, tokenize: Callable[[list[str]], torch.Tensor]) -> None:
        self.transform = transform
        self.tokenize = tokenize
        self.takes_generator = _accepts_generator(transform)

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
        try:
            img = open_image()
        except FileNotFoundError:
            return SkipRecord(where, "missing file")
        except ImageLoadError as exc:
            return SkipRecord(where, f"unreadable image: {exc.__cause__ or exc}")
        try:
            tokens = self.tokenize([caption])[0]
        except ValueError as exc:  # e.g. a caption over the context length with truncate=False
            return SkipRecord(where, f"bad caption: {exc}")
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
        skipped = [x for x in items if isinstance(x, SkipRecord)]
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
# Map-style sources


class StringTable:
    """Strings packed in one bytes object plus numpy offsets.

    Forked DataLoader workers that read a Python list of str touch each object's refcount, which
    copies the list's memory pages into every worker; one bytes object avoids that for big manifests.
    """

    def __init__(self, strings: Iterable[str]) -> None:
        encoded = [s.encode("utf-8") for s in strings]
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=self._offsets[1:])
        self._data = b"".join(encoded)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self._data[self._offsets[i] : self._offsets[i + 1]].decode("utf-8")


class ManifestSource:
    """(path, caption) rows of a validated manifest; images are opened lazily in workers."""

    def __init__(self, entries: list[tuple[str, str]]) -> None:
        self.paths = StringTable(p for p, _ in entries)
        self.captions = StringTable(c for _, c in entries)

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, index: int) -> tuple[str, Callable[[], Image.Image], str]:
        path = self.paths[index]
        return path, lambda: _open_file(path), self.captions[index]


def _open_file(path: str) -> Image.Image:
    if not os.path.isfile(path):
        raise FileNotFoundError(path)
    return load_image(path)


class SyntheticSource:
    """The built-in generator; sample i is a pure function of (synthetic_seed, i).

    With ``cache=True`` all images are rendered once per process (in parallel, with a progress bar)
    into one uint8 array that forked DataLoader workers share; later epochs only re-augment them.
    The pixels are identical to rendering on the fly.
    """

    def __init__(self, size: int, seed: int, image_size: int, cache: bool = False) -> None:
        from .synthetic import SyntheticCaptions

        self.data = SyntheticCaptions(size, seed=seed, image_size=image_size, split="train")
        self.cached = _render_cached(size, seed, image_size) if cache else None

    def __len__(self) -> int:
        return len(self.data)

    def get(self, index: int) -> tuple[str, Callable[[], Image.Image], str]:
        if self.cached is not None:
            pixels, captions = self.cached
            return f"synthetic:{index}", lambda: Image.fromarray(pixels[index]), captions[index]
        sample = self.data[index]
        return f"synthetic:{index}", lambda: sample.image, sample.caption


_SYNTHETIC_CACHE: dict[tuple[int, int, int], tuple[np.ndarray, StringTable]] = {}


def _render_range(args: tuple[int, int, int, int, int]) -> tuple[np.ndarray, list[str]]:
    from .synthetic import SyntheticCaptions

    size, seed, image_size, start, stop = args
    data = SyntheticCaptions(size, seed=seed, image_size=image_size, split="train")
    samples = [data[i] for i in range(start, stop)]
    return np.stack([np.asarray(s.image, dtype=np.uint8) for s in samples]), [s.caption for s in samples]


def _render_cached(size: int, seed: int, image_size: int) -> tuple[np.ndarray, StringTable]:
    key = (size, seed, image_size)
    if key not in _SYNTHETIC_CACHE:
        import multiprocessing as mp

        from tqdm import tqdm

        chunk = 500
        jobs = [(size, seed, image_size, a, min(size, a + chunk)) for a in range(0, size, chunk)]
        pixels = np.empty((size, image_size, image_size, 3), dtype=np.uint8)
        captions: list[str] = []
        processes = max(1, min(os.cpu_count() or 1, len(jobs)))
        with mp.get_context("fork" if os.name == "posix" else "spawn").Pool(processes) as pool:
            bar = tqdm(total=size, desc="rendering synthetic set", unit="img")
            for job, (arr, caps) in zip(jobs, pool.imap(_render_range, jobs), strict=True):
                start = job[3]
                pixels[start : start + len(arr)] = arr
                captions.extend(caps)
                bar.update(len(arr))
            bar.close()
        _SYNTHETIC_CACHE[key] = (pixels, StringTable(captions))
    return _SYNTHETIC_CACHE[key]


class MapSamples(Dataset):
    """Dataset index -> ``Decoded`` or ``SkipRecord`` with the (seed, epoch, index) augmentation seed."""

    def __init__(
        self, source: ManifestSource | SyntheticSource, maker: SampleMaker, seed: int, epoch: int
    ) -> None:
        self.source, self.maker, self.seed, self.epoch = source, maker, seed, epoch

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Decoded | SkipRecord:
        where, open_image, caption = self.source.get(index)
        return self.maker.make(where, open_image, caption, index, mix_seed(self.seed, self.epoch, index))


def epoch_batches(
    n: int, batch_size: int, seed: int, epoch: int, rank: int, world_size: int
) -> list[list[int]]:
    """This rank's batches of dataset indices for one epoch (see the module docstring)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, epoch)))
    per_rank = (n // (world_size * batch_size)) * batch_size
    return perm[rank * per_rank : (rank + 1) * per_rank].view(-1, batch_size).tolist()


# ---------------------------------------------------------------------------------------------
# The loader


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


def loader_kwargs(workers: int, seed: int, epoch: int, rank: int) -> dict:
    """DataLoader settings shared by all sources."""
    return dict(
        num_workers=workers,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
        # An explicit generator: DataLoader otherwise draws worker seeds from torch's global RNG,
        # which would shift the training loop's own random stream.
        generator=torch.Generator().manual_seed(mix_seed(seed, epoch, rank, 1)),
    )


def build_train_loader(
    cfg: DataConfig,
    *,
    transform: Callable,
    tokenize: Callable[[list[str]], torch.Tensor],
    batch_size: int,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    start_batch: int = 0,
    image_size: int | None = None,
) -> TrainLoader:
    """The ``TrainLoader`` for epoch ``epoch`` on rank ``rank`` of ``world_size``.

    ``transform`` maps a PIL image to [3, H, W] (called with ``generator=``); ``tokenize`` maps a
    list of captions to [N, ctx] token ids. ``image_size`` is the size the synthetic source renders
    at (default 64). Manifests are read and validated here, so a malformed line fails before
    training starts.
    """
    _check_positions(batch_size, rank, world_size, start_batch)
    maker = SampleMaker(transform, tokenize)
    collate = Collate(*maker.empty_shapes(image_size))
    if cfg.source == "webdataset":
        from .wds import build_wds_loader

        return build_wds_loader(
            cfg, maker, collate, batch_size=batch_size, seed=seed, epoch=epoch,
            rank=rank, world_size=world_size, start_batch=start_batch,
        )  # fmt: skip
    if cfg.source == "manifest":
        source = ManifestSource(read_manifest(cfg.path, cfg.image_key, cfg.caption_key))
    else:
        source = SyntheticSource(
            cfg.synthetic_size, cfg.synthetic_seed, image_size or 64, cfg.synthetic_cache
        )
    batches = epoch_batches(len(source), batch_size, seed, epoch, rank, world_size)
    if not batches:
        raise ValueError(
            f"{len(source)} samples make no full batch of {batch_size} on each of {world_size} rank(s); "
            "lower batch_size or add data"
        )
    check_start_batch(start_batch, len(batches))
    loader = DataLoader(
        MapSamples(source, maker, seed, epoch),
        batch_sampler=batches[start_batch:],
        collate_fn=collate,
        **loader_kwargs(cfg.workers, seed, epoch, rank),
    )
    return TrainLoader(loader, len(batches), start_batch, skip_leading=False)


def _check_positions(batch_size: int, rank: int, world_size: int, start_batch: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if start_batch < 0:
        raise ValueError(f"start_batch must be >= 0, got {start_batch}")


def check_start_batch(start_batch: int, num_batches: int) -> None:
    if start_batch > num_batches:
        raise ValueError(
            f"start_batch={start_batch} is past the end of the epoch ({num_batches} batches per rank); "
            "resume at the next epoch with start_batch=0"
        )


__all__ = [
    "Batch",
    "DataConfig",
    "SkipRecord",
    "TrainLoader",
    "build_train_loader",
    "epoch_batches",
    "mix_seed",
]
