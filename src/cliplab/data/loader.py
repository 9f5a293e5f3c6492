"""Training batches from a manifest, WebDataset shards or the synthetic set, behind one interface.

``build_train_loader(cfg, ...)`` returns a ``TrainLoader`` for one epoch on one rank. Iterating it
yields ``Batch`` objects: images, token ids, dataset indices and the ``SkipRecord`` of every sample
in that batch that could not be used.

Map-style sources (``manifest``, ``synthetic``) are exactly reproducible:

* the epoch's order is ``torch.randperm`` from a generator seeded by (seed, epoch), cut into global
  batches of ``world_size * batch_size`` (the remainder, fewer than one global batch, is dropped, so
  every rank runs the same number of batches); rank ``r`` takes the ``r``-th slice of each global
  batch. Global batch k is therefore the same set of samples whatever the number of ranks, so
  N ranks with batch b see exactly what one process with batch N * b sees, and no sample is read
  twice within an epoch;
* augmentation draws come from a generator seeded by (seed, epoch, dataset index), never from a
  worker's global RNG, so batches do not depend on the number of workers;
* ``start_batch=k`` yields batches k, k+1, ... of that epoch without decoding the first k.

WebDataset shards are streamed (see ``cliplab.data.wds``); there ``start_batch`` only skips batches
and a resumed epoch is approximate. What both kinds of source share (``DataConfig``, per-sample
decoding, ``Batch``, ``TrainLoader``) lives in ``cliplab.data.samples``; this module imports
``cliplab.data.wds`` only when a WebDataset source is asked for.

Bad samples never stop training. A missing, unreadable, truncated or non-image file, an empty
caption or a broken tar member becomes a ``SkipRecord`` (where + why). Samples are decoded in
worker processes, so the records travel inside the batch they would have belonged to.

Refill. Several ranks step together only on full batches, so a map-style source fills the place
of an unusable sample with a substitute: dataset index ``mix_seed(seed, epoch, index, attempt) %
len(dataset)`` for attempt 1, 2, ... up to ``MAX_REFILL_ATTEMPTS``, the first usable one (its
augmentation seeded by (seed, epoch, substitute, index)). The choice depends on nothing but those
numbers, so refilled batches too are the same for any number of workers or ranks and under
``start_batch``. The substitute's ``Decoded.replaces`` carries the unusable sample's record, which
is counted exactly as before; substitutes that fail are not recorded again (they are recorded in
their own place in the epoch). A refilled sample therefore appears twice in that epoch (rarely
twice in one batch), with different augmentations. When every attempt fails the place stays empty
and the batch comes out short; a batch whose samples all failed is still yielded, as an EMPTY
batch (``len(batch) == 0``) carrying its skip records: the training loop should not step on it,
but counts it as a position in the epoch so ``start_batch`` stays aligned.

With CUDA training, pass ``pin_memory=True`` so batches arrive in page-locked memory and the copy
to the device can overlap compute (``Batch.to(device, non_blocking=True)``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..errors import UsageError
from .manifest import read_manifest
from .samples import (
    Collate,
    DataConfig,
    Decoded,
    EncodedImage,
    SampleMaker,
    SkipRecord,
    TrainLoader,
    check_start_batch,
    loader_kwargs,
    mix_seed,
)

# How many substitutes are tried for an unusable sample before its place is left empty.
MAX_REFILL_ATTEMPTS = 8

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
        return path, EncodedImage(path), self.captions[index]


class SyntheticSource:
    """The built-in generator; sample i is a pure function of (synthetic_seed, i).

    With ``cache=True`` all images are rendered once per process (in parallel, with a progress bar)
    into one uint8 array that forked DataLoader workers share; later epochs only re-augment them.
    The pixels are identical to rendering on the fly.
    """

    def __init__(
        self, size: int, seed: int, image_size: int, cache: bool = False, progress: bool = True
    ) -> None:
        from .synthetic import SyntheticCaptions

        self.data = SyntheticCaptions(size, seed=seed, image_size=image_size, split="train")
        self.cached = _render_cached(size, seed, image_size, progress) if cache else None

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


def _render_cached(
    size: int, seed: int, image_size: int, progress: bool = True
) -> tuple[np.ndarray, StringTable]:
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
            bar = tqdm(total=size, desc="rendering synthetic set", unit="img", disable=not progress)
            for job, (arr, caps) in zip(jobs, pool.imap(_render_range, jobs), strict=True):
                start = job[3]
                pixels[start : start + len(arr)] = arr
                captions.extend(caps)
                bar.update(len(arr))
            bar.close()
        _SYNTHETIC_CACHE[key] = (pixels, StringTable(captions))
    return _SYNTHETIC_CACHE[key]


class MapSamples(Dataset):
    """Dataset index -> ``Decoded`` (refilled if unusable; see the module docstring) or ``SkipRecord``.

    Sample ``index`` is augmented with the seed (seed, epoch, index).
    """

    def __init__(
        self, source: ManifestSource | SyntheticSource, maker: SampleMaker, seed: int, epoch: int
    ) -> None:
        self.source, self.maker, self.seed, self.epoch = source, maker, seed, epoch

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Decoded | SkipRecord:
        first = self._make(index, mix_seed(self.seed, self.epoch, index))
        if isinstance(first, Decoded):
            return first
        for attempt in range(1, MAX_REFILL_ATTEMPTS + 1):
            other = refill_index(len(self.source), self.seed, self.epoch, index, attempt)
            sample = self._make(other, mix_seed(self.seed, self.epoch, other, index))
            if isinstance(sample, Decoded):
                sample.replaces = first
                return sample
        return first

    def _make(self, index: int, aug_seed: int) -> Decoded | SkipRecord:
        where, open_image, caption = self.source.get(index)
        return self.maker.make(where, open_image, caption, index, aug_seed)


def refill_index(n: int, seed: int, epoch: int, index: int, attempt: int) -> int:
    """The dataset index tried, at ``attempt`` (1, 2, ...), in place of unusable sample ``index``."""
    return mix_seed(seed, epoch, index, attempt, 5) % n


def epoch_batches(
    n: int, batch_size: int, seed: int, epoch: int, rank: int, world_size: int
) -> list[list[int]]:
    """This rank's batches of dataset indices for one epoch (see the module docstring)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, epoch)))
    num_batches = n // (world_size * batch_size)
    global_batches = perm[: num_batches * world_size * batch_size].view(num_batches, world_size, batch_size)
    return global_batches[:, rank].tolist()


# ---------------------------------------------------------------------------------------------
# The loader


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
    pin_memory: bool = False,
    progress: bool = True,
) -> TrainLoader:
    """The ``TrainLoader`` for epoch ``epoch`` on rank ``rank`` of ``world_size``.

    ``transform`` maps a PIL image to [3, H, W] (called with ``generator=``); ``tokenize`` maps a
    list of captions to [N, ctx] token ids. ``image_size`` is the size the synthetic source renders
    at (default 64). ``pin_memory=True`` (for training on CUDA) yields batches in page-locked
    memory. Manifests are read and validated here, so a malformed line fails before training starts.
    ``progress`` shows a bar while the synthetic set is rendered into its cache. With
    ``cfg.reduced_decode`` a transform with a ``decode`` method (``TrainTransform``) decodes and
    augments manifest images in one go, JPEGs at reduced scale (see ``DataConfig``).
    """
    _check_positions(batch_size, rank, world_size, start_batch)
    maker = SampleMaker(transform, tokenize, cfg.reduced_decode)
    collate = Collate(*maker.empty_shapes(image_size))
    if cfg.source == "webdataset":
        from .wds import build_wds_loader

        return build_wds_loader(
            cfg, maker, collate, batch_size=batch_size, seed=seed, epoch=epoch,
            rank=rank, world_size=world_size, start_batch=start_batch, pin_memory=pin_memory,
        )  # fmt: skip
    if cfg.source == "manifest":
        source = ManifestSource(read_manifest(cfg.path, cfg.image_key, cfg.caption_key))
    else:
        source = SyntheticSource(
            cfg.synthetic_size, cfg.synthetic_seed, image_size or 64, cfg.synthetic_cache, progress
        )
    batches = epoch_batches(len(source), batch_size, seed, epoch, rank, world_size)
    if not batches:
        raise UsageError(
            f"{len(source)} samples make no full batch of {batch_size} on each of {world_size} rank(s); "
            "lower batch_size or add data"
        )
    check_start_batch(start_batch, len(batches))
    loader = DataLoader(
        MapSamples(source, maker, seed, epoch),
        batch_sampler=batches[start_batch:],
        collate_fn=collate,
        **loader_kwargs(cfg.workers, seed, epoch, rank, pin_memory),
    )
    return TrainLoader(loader, len(batches), start_batch, skip_leading=False)


def _check_positions(batch_size: int, rank: int, world_size: int, start_batch: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if start_batch < 0:
        raise ValueError(f"start_batch must be >= 0, got {start_batch}")


__all__ = ["MAX_REFILL_ATTEMPTS", "build_train_loader", "epoch_batches", "refill_index"]
