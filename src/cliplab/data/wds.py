"""WebDataset tar shards as a training source, streamed with the ``webdataset`` library.

A sample is the tar members sharing a key: an image (``.jpg``, ``.jpeg``, ``.png`` or ``.webp``)
and a caption, read from ``.txt`` when present, else from the ``.json`` member's
``DataConfig.caption_key`` (by default the first of "caption", "text" it has). Images are decoded
as the manifest's are (``SampleMaker``: a large JPEG at reduced size unless ``data.reduced_decode``
is false), with ``cliplab.transforms``' decompression-bomb guard.

Shard specs are expanded by :func:`resolve_shards`, which evaluation uses too. This module imports
the ``webdataset`` package only when shards are streamed or a pattern is expanded.

Splitting. Without ``resampled``, an epoch is one pass over the shards and no sample is read twice
in it. The shard list is shuffled with a seed from (seed, epoch), identically on every rank, then
ordered largest first by the ``sizes.json`` counts (a stable sort: shards of equal size stay
shuffled); rank ``r`` takes every ``world_size``-th shard from ``r``, worker ``w`` of that rank
every ``workers``-th of those, and reads them in its own seeded order. A rank never starts more
workers than it has shards. Each worker's samples are mixed in a shuffle buffer of
``DataConfig.shuffle_buffer`` (seeded per seed, epoch, rank and worker) and batched: an unusable
sample's place goes to the next usable sample of the stream, so every batch is full.

With ``resampled=True`` every worker draws shards with replacement from an RNG seeded by (seed,
epoch, rank, worker), an endless stream, so ranks and workers read different streams; samples can
repeat within an epoch.

Epoch length (``num_batches``, the same on every rank). Resampled: ``DataConfig.num_samples``, else
the sum of the ``sizes.json`` counts (``{"shard-000000.tar": 1000, ...}``), divided by
``batch_size * world_size``. One pass: the full batches that the smallest rank's workers make from
their shards, counted from ``sizes.json`` (the same count every epoch, since sorting by size puts a
shard of the same size in each place); ``DataConfig.num_samples`` can only shorten that, and is
taken as is when there is no ``sizes.json``. What an epoch does not read is its remainder: each
worker's last partial batch (fewer than ``batch_size`` samples), the batches a larger rank holds
beyond the smallest rank's count, and what lies past ``num_samples``. With shards of equal size and
a shard count divisible by ``world_size * workers`` only the partial batches are left out. A rank
whose stream ends early (unusable samples cost a worker its last full batch, or ``num_samples``
promised more than the shards hold) ends the epoch for every rank, since the training loop leaves
an epoch when the first rank's stream ends: the other ranks' remaining batches are not trained on
in that epoch.

Resume is approximate: ``start_batch=k`` decodes and drops the first k batches of the stream (their
skip records are not counted again). Every worker's stream is seeded and DataLoader takes batches
from the workers in turn, so with the same shards, ``workers`` and ``world_size`` the resumed run
sees the batches the uninterrupted one would have; change any of them and it does not.

Broken data (an undecodable image member, a sample without image or caption, a truncated tar) is
recorded as ``SkipRecord("shard.tar:key", reason)`` in the next batch of that worker; records found
after a worker's last full batch travel in that batch (each batch waits until the next is full).
A worker that makes no full batch yields nothing, and its records are lost with its samples.
"""

from __future__ import annotations

import glob
import json
import os
import random
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import UsageError
from ..fileio import read_text
from .manifest import CAPTION_COLUMNS
from .samples import (
    Batch,
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

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
# What makes a string a pattern for webdataset's own expansion rather than one path: braces,
# "::"-separated lists and $WDS_ environment variables (webdataset.shardlists.expand_urls).
_PATTERN_MARKS = ("{", "::", "$")


def resolve_shards(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Shard paths from a spec, checked to exist: the one way cliplab expands shard specs.

    A directory means its ``*.tar`` files, sorted. A brace pattern (``data/shard-{000000..000009}.tar``),
    a ``::``-separated list or a ``$WDS_`` variable is expanded by webdataset's own
    ``webdataset.shardlists.expand_urls``, exactly as webdataset reads it. A list is taken as is;
    any other string is one shard. URLs (``scheme://``) are not checked. A spec naming no existing
    file is a ``UsageError`` that names it.
    """
    if isinstance(spec, (list, tuple)):
        shards, what = [os.fspath(s) for s in spec], f"the list of {len(spec)} shard(s)"
    else:
        spec = os.fspath(spec)
        what = repr(spec)
        if os.path.isdir(spec):
            shards = sorted(glob.glob(os.path.join(glob.escape(spec), "*.tar")))
            if not shards:
                raise UsageError(f"no *.tar shards in directory {spec}; check the shard path")
        elif any(mark in spec for mark in _PATTERN_MARKS):
            shards = _expand_urls(spec)
        else:
            shards = [spec]
    if not shards:
        raise UsageError(
            f"{what} names no shards; give a directory of *.tar files, a brace pattern or a list"
        )
    missing = [s for s in shards if "://" not in s and not os.path.isfile(s)]
    if len(missing) == len(shards):
        raise UsageError(
            f"no shard file matches {what}: none of its {len(shards)} path(s) exist (first: {shards[0]}); "
            "check the path and the brace range"
        )
    if missing:
        raise UsageError(
            f"{len(missing)} of the {len(shards)} shards named by {what} do not exist, e.g. {missing[:3]}; "
            "check the path and the brace range"
        )
    return shards


def _expand_urls(spec: str) -> list[str]:
    try:
        from webdataset.shardlists import expand_urls
    except ImportError:
        raise UsageError(
            f"expanding the shard pattern {spec!r} needs the webdataset package: pip install 'cliplab[train]' "
            "(or give a directory of *.tar files or a list)"
        ) from None
    return list(expand_urls(spec))


def shard_sizes(shards: list[str], required: bool = True) -> dict[str, int] | None:
    """Samples per shard from the ``sizes.json`` in each shard's directory.

    Returns None when a file or entry is missing and ``required`` is False; raises otherwise.
    """
    sizes, tables = {}, {}
    for shard in shards:
        folder = os.path.dirname(os.path.abspath(shard))
        try:
            if folder not in tables:
                tables[folder] = _read_sizes(Path(folder) / "sizes.json")
            name = os.path.basename(shard)
            if name not in tables[folder]:
                raise UsageError(
                    f"{folder}/sizes.json has no entry for {name}; add one or set DataConfig.num_samples"
                )
        except (OSError, ValueError):
            if required:
                raise
            return None
        sizes[shard] = int(tables[folder][name])
    return sizes


def _read_sizes(path: Path) -> dict:
    if not path.is_file():
        raise UsageError(
            f"{path} not found: set DataConfig.num_samples (samples per epoch) or write sizes.json "
            'mapping shard file names to sample counts, e.g. {"shard-000000.tar": 1000}'
        )
    try:
        table = json.loads(read_text(path, "shard sizes file"))
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    if not isinstance(table, dict):
        raise UsageError(f"{path}: expected a JSON object mapping shard names to sample counts")
    return table


class _Tally:
    """One worker's bookkeeping, shared by the stages of its stream."""

    def __init__(self) -> None:
        self.pending: list[SkipRecord] = []  # records waiting for the next batch
        self.read = 0  # samples read from tar files so far
        self.shard = "?"  # the shard being read: the tar reader asks for the next url only when done
        self.errors = 0  # tar read errors so far
        self._last = (None, -1)

    def add(self, record: SkipRecord) -> None:
        # webdataset reports one truncation twice (member reader, then shard reader) with no sample
        # read in between: keep one. The same error on a later pass is a new skip and is kept.
        if self._last != (record, self.read):
            self.pending.append(record)
        self._last = (record, self.read)


def shard_order(shards: list[str], sizes: dict[str, int] | None, seed: int, epoch: int) -> list[str]:
    """This epoch's shard order, the same on every rank: shuffled, then largest first (stable)."""
    order = list(shards)
    random.Random(mix_seed(seed, epoch, 4)).shuffle(order)
    if sizes:
        order.sort(key=lambda shard: -sizes[shard])
    return order


def pass_batches(sizes: list[int], batch_size: int, world_size: int, workers: int) -> int:
    """Full batches per rank in one pass: the smallest rank's sum over its workers.

    ``sizes`` are the shards' sample counts; positions follow ``shard_order``'s split.
    """
    ordered = sorted(sizes, reverse=True)
    return min(
        sum(sum(ordered[rank::world_size][w::workers]) // batch_size for w in range(workers))
        for rank in range(world_size)
    )


class ShardStream(IterableDataset):
    """Batches from this rank's share of the shards; each DataLoader worker reads its own shards."""

    def __init__(
        self, shards: list[str], sizes: dict[str, int] | None, cfg: DataConfig, maker: SampleMaker,
        collate: Collate, *, batch_size: int, seed: int, epoch: int, rank: int, world_size: int,
    ) -> None:  # fmt: skip
        self.shards, self.sizes, self.maker, self.collate = shards, sizes, maker, collate
        self.resampled, self.buffer = cfg.resampled, cfg.shuffle_buffer
        self.caption_keys = (cfg.caption_key,) if cfg.caption_key else CAPTION_COLUMNS
        self.batch_size, self.seed, self.epoch = batch_size, seed, epoch
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        tally = _Tally()

        def on_error(exc: Exception) -> bool:
            detail = str(exc.args[0]).split(" @ ")[0] if exc.args else ""
            tally.errors += 1
            tally.add(SkipRecord(tally.shard, f"broken tar: {type(exc).__name__}: {detail}"))
            return True  # go on with the next member or shard

        import webdataset  # only here, when shards are streamed: an optional dependency

        urls = self._urls(worker, workers, tally)
        samples = _counted(webdataset.tarfile_to_samples(handler=on_error)(urls), tally)
        if self.buffer > 1:
            rng = random.Random(mix_seed(self.seed, self.epoch, self.rank, worker, 2))
            samples = webdataset.shuffle(self.buffer, initial=self.buffer, rng=rng)(samples)
        yield from self._batches(samples, tally)

    def _batches(self, samples: Iterator[dict], tally: _Tally) -> Iterator[Batch]:
        """Full batches of usable samples; each is held back until the next is full (module docstring)."""
        good: list[Decoded] = []
        skipped: list[SkipRecord] = []
        held: list[Decoded | SkipRecord] | None = None
        for sample in samples:
            item = self._decode(sample)
            if isinstance(item, Decoded):
                good.append(item)
            else:
                skipped.append(item)
            if len(good) == self.batch_size:
                if held is not None:
                    yield self.collate(held)
                held = [*good, *skipped, *tally.pending]
                good, skipped = [], []
                tally.pending.clear()
        if held is not None:
            yield self.collate([*held, *skipped, *tally.pending])

    def _urls(self, worker: int, workers: int, tally: _Tally) -> Iterator[dict]:
        if self.resampled:
            rng = random.Random(mix_seed(self.seed, self.epoch, self.rank, worker, 3))
            while True:
                yield from self._read(rng.choice(self.shards), tally)
        order = shard_order(self.shards, self.sizes, self.seed, self.epoch)
        mine = order[self.rank :: self.world_size][worker::workers]
        random.Random(mix_seed(self.seed, self.epoch, self.rank, worker, 6)).shuffle(mine)
        for url in mine:
            yield from self._read(url, tally)

    def _read(self, url: str, tally: _Tally) -> Iterator[dict]:
        tally.shard, before, errors = url, tally.read, tally.errors
        yield {"url": url}
        # Resumed when the reader wants the next shard, so the samples of `url` have been counted
        # (all but the last when the read failed; that failure is recorded already). Python's
        # tarfile ends quietly at a bad header or a cut between members: sizes.json tells.
        expected = self.sizes.get(url) if self.sizes else None
        if expected is not None and tally.errors == errors and tally.read - before < expected:
            tally.add(
                SkipRecord(
                    url,
                    f"short shard: read {tally.read - before} of {expected} samples (truncated or corrupt tar)",
                )
            )

    def _decode(self, sample: dict) -> Decoded | SkipRecord:
        url, key = sample.get("__url__", "?"), sample.get("__key__", "?")
        where = f"{url}:{key}"
        ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
        if ext is None:
            return SkipRecord(where, f"missing image: no {'/'.join(IMAGE_EXTENSIONS)} member")
        try:
            caption = self._caption(sample)
        except ValueError as exc:
            return SkipRecord(where, str(exc))
        # Seeded by shard file name and key, not full path, so moving the data keeps the augmentation.
        seed = mix_seed(self.seed, self.epoch, zlib.crc32(f"{os.path.basename(url)}:{key}".encode()))
        # Undecoded bytes: the training transform may decode a large JPEG at reduced size (see samples.py).
        return self.maker.make(where, EncodedImage(sample[ext], name=where), caption, -1, seed)

    def _caption(self, sample: dict) -> str:
        """The .txt member, else the .json member's first caption key; ValueError says what is wrong."""
        try:
            if "txt" in sample:
                return sample["txt"].decode("utf-8")
            if "json" in sample:
                obj = json.loads(sample["json"])
                if isinstance(obj, dict):
                    key = next((k for k in self.caption_keys if k in obj), None)
                    if isinstance(obj.get(key), str):
                        return obj[key]
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"bad caption: {type(exc).__name__}: {exc}") from None
        keys = " or ".join(map(repr, self.caption_keys))
        raise ValueError(f"missing caption: no .txt member and no string {keys} in .json")


def _counted(samples: Iterator[dict], tally: _Tally) -> Iterator[dict]:
    # Counted before the shuffle buffer, which holds samples back while it fills.
    for sample in samples:
        tally.read += 1
        yield sample


def build_wds_loader(
    cfg: DataConfig, maker: SampleMaker, collate: Collate,
    *, batch_size: int, seed: int, epoch: int, rank: int, world_size: int, start_batch: int,
    pin_memory: bool,
) -> TrainLoader:  # fmt: skip
    """The WebDataset ``TrainLoader`` (called by ``build_train_loader``)."""
    shards = resolve_shards(cfg.path)
    sizes = shard_sizes(shards, required=cfg.num_samples is None)
    workers = cfg.workers
    if cfg.resampled:
        num_samples = cfg.num_samples or sum(sizes.values())
        num_batches = num_samples // (batch_size * world_size)
        what = f"{num_samples} samples per epoch"
    else:
        if len(shards) < world_size:
            raise UsageError(
                f"{len(shards)} shard(s) cannot be split over {world_size} ranks; write more, smaller "
                "shards or set DataConfig.resampled=True"
            )
        # A worker without shards would sit idle; never start more workers than a rank has shards.
        workers = min(workers, len(shards) // world_size)
        counts = [] if cfg.num_samples is None else [cfg.num_samples // (batch_size * world_size)]
        if sizes is not None:
            counts.append(pass_batches([sizes[s] for s in shards], batch_size, world_size, max(1, workers)))
        num_batches = min(counts)
        what = f"{len(shards)} shard(s) read by {world_size} rank(s) x {max(1, workers)} worker(s)"
    if num_batches == 0:
        raise UsageError(
            f"{what} make no full batch of {batch_size} on every rank; lower batch_size or "
            "DataConfig.workers, or add data (DataConfig.num_samples, sizes.json)"
        )
    check_start_batch(start_batch, num_batches)
    stream = ShardStream(
        shards,
        sizes,
        cfg,
        maker,
        collate,
        batch_size=batch_size,
        seed=seed,
        epoch=epoch,
        rank=rank,
        world_size=world_size,
    )
    loader = DataLoader(stream, batch_size=None, **loader_kwargs(workers, seed, epoch, rank, pin_memory))
    return TrainLoader(loader, num_batches, start_batch, skip_leading=True)


__all__ = ["ShardStream", "build_wds_loader", "pass_batches", "resolve_shards", "shard_order", "shard_sizes"]
