"""Training data across ranks and DataLoader workers: exact splits, refill of bad samples, resume."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from cliplab.data import DataConfig, build_train_loader, read_manifest
from cliplab.data.loader import MAX_REFILL_ATTEMPTS, epoch_batches, refill_index
from cliplab.data.synthetic import SyntheticCaptions, SyntheticSample
from cliplab.data.writers import write_files, write_webdataset
from cliplab.tokenizer import tokenize
from cliplab.transforms import image_transform

SIZE = 32
TRAIN = image_transform(SIZE, train=True, crop_scale=(0.3, 1.0))
EVAL = image_transform(SIZE)


def load(cfg: DataConfig, batch_size: int, transform=TRAIN, **kw):
    kw = {"seed": 5, "epoch": 0, "image_size": SIZE} | kw
    return build_train_loader(cfg, transform=transform, tokenize=tokenize, batch_size=batch_size, **kw)


def manifest_cfg(path: Path, workers: int) -> DataConfig:
    return DataConfig(source="manifest", path=str(path), workers=workers)


def labelled(n: int) -> list[SyntheticSample]:
    """n synthetic samples captioned "sample <i>", so a batch's token ids tell which samples it holds."""
    data = SyntheticCaptions(n, seed=1, image_size=SIZE)
    return [SyntheticSample(data[i].image, f"sample {i}", {}) for i in range(n)]


def keys_of(batch) -> list[int]:
    """The labelled samples' numbers in a batch, decoded from its token ids."""
    return [TOKEN_KEYS[tuple(t.tolist())] for t in batch.texts]


TOKEN_KEYS = {tuple(t.tolist()): i for i, t in enumerate(tokenize([f"sample {i}" for i in range(200)]))}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return write_files(labelled(70), tmp_path_factory.mktemp("manifest"), fmt="csv", progress=False)


def break_files(root: Path, bad: dict[int, str]) -> None:
    """Make image i unreadable ("truncated"/"text") or remove it ("missing")."""
    for i, how in bad.items():
        p = root / f"images/{i:06d}.png"
        if how == "truncated":
            p.write_bytes(p.read_bytes()[:40])
        elif how == "text":
            p.write_text("not an image", encoding="utf-8")
        else:
            p.unlink()


@pytest.fixture(scope="module")
def corrupt(tmp_path_factory) -> tuple[Path, dict[int, str]]:
    """A 60-sample manifest with 7 unusable images; returns (manifest, {index: how it was broken})."""
    root = tmp_path_factory.mktemp("corrupt")
    path = write_files(labelled(60), root, fmt="csv", progress=False)
    bad = {
        2: "truncated",
        11: "text",
        19: "missing",
        23: "truncated",
        38: "missing",
        44: "text",
        57: "missing",
    }
    break_files(root, bad)
    return path, bad


def epoch(cfg: DataConfig, batch_size: int, **kw) -> list:
    return list(load(cfg, batch_size, **kw))


# ---------------------------------------------------------------------------------------------
# (a) map-style: ranks x workers split an epoch exactly


def test_manifest_ranks_and_workers_read_every_sample_once(manifest):
    cfg, b, world = manifest_cfg(manifest, workers=2), 4, 2
    per_rank = [epoch(cfg, b, rank=r, world_size=world) for r in range(world)]
    assert [len(batches) for batches in per_rank] == [70 // (world * b)] * world
    seen = [i for batches in per_rank for batch in batches for i in batch.indices.tolist()]
    assert all(keys_of(batch) == batch.indices.tolist() for batches in per_rank for batch in batches)
    assert len(seen) == len(set(seen)), "a sample was read twice in one epoch"
    missing = set(range(70)) - set(seen)
    assert len(missing) == 70 % (world * b) < world * b


# ---------------------------------------------------------------------------------------------
# (b) WebDataset: ranks x workers split the shards exactly


@pytest.mark.parametrize(
    "n, shard_size, workers, b",
    [
        (72, 9, 2, 4),  # 8 equal shards over 2 ranks x 2 workers: only partial batches are left
        (70, 9, 2, 4),  # a smaller last shard: sorted by size, it lands in the same place every epoch
        (76, 8, 2, 5),  # ... where the place matters: a worker with fewer shards must not get it
        (40, 8, 1, 4),  # 5 shards over 2 ranks: the rank with 3 stops at the other rank's count
    ],
)
def test_webdataset_ranks_and_workers_read_every_sample_once(tmp_path, n, shard_size, workers, b):
    write_webdataset(labelled(n), tmp_path, shard_size=shard_size, progress=False)
    cfg = DataConfig(source="webdataset", path=str(tmp_path), workers=workers, shuffle_buffer=16)
    world = 2
    for ep in range(3):  # unsorted, the small shard of case 76 would reach a short worker in epoch 2
        loaders = [load(cfg, b, EVAL, rank=r, world_size=world, epoch=ep) for r in range(world)]
        per_rank = [list(loader) for loader in loaders]
        num_batches = loaders[0].num_batches
        assert [len(batches) for batches in per_rank] == [num_batches] * world  # no rank ends early
        assert all(len(batch) == b for batches in per_rank for batch in batches)
        seen = Counter(k for batches in per_rank for batch in batches for k in keys_of(batch))
        assert max(seen.values()) == 1, "a sample was read twice in one epoch"
        assert len(seen) == num_batches * world * b
        if n == 40:  # uneven ranks: the larger rank's extra shard is the documented remainder
            assert num_batches == 16 // b and n - len(seen) == 8
        elif n == 76:
            assert num_batches == 7 and n - len(seen) == 6
        else:  # equal split: only each worker's last partial batch is left out
            assert num_batches == (n // (world * workers)) // b * workers
            assert n - len(seen) < world * workers * b


def test_shard_order_is_shuffled_per_epoch_with_the_same_sizes_in_each_place():
    from cliplab.data.wds import shard_order

    shards = [f"s{i}.tar" for i in range(10)]
    sizes = dict.fromkeys(shards, 8) | {"s3.tar": 4, "s7.tar": 6}
    orders = [shard_order(shards, sizes, seed=5, epoch=ep) for ep in range(4)]
    assert len({tuple(o) for o in orders}) == 4  # a new order every epoch
    assert all([sizes[s] for s in o] == [8] * 8 + [6, 4] for o in orders)  # largest first, stable
    assert shard_order(shards, None, 5, 0) != shards and sorted(shard_order(shards, None, 5, 0)) == shards


def test_webdataset_bad_samples_are_replaced_by_the_next_ones_of_the_stream(tmp_path):
    import io
    import tarfile

    shards = write_webdataset(labelled(64), tmp_path, shard_size=8, progress=False)
    broken = {"000003.png", "000020.png", "000041.png"}
    for shard in shards:
        with tarfile.open(shard) as tar:
            members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
        with tarfile.open(shard, "w") as tar:
            for name, data in members:
                data = b"garbage" if name in broken else data
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    cfg = DataConfig(source="webdataset", path=str(tmp_path), workers=2, shuffle_buffer=0)
    loaders = [load(cfg, 5, EVAL, rank=r, world_size=2) for r in range(2)]
    batches = [batch for loader in loaders for batch in loader]
    assert all(len(batch) == 5 for batch in batches) and len(batches) == 2 * loaders[0].num_batches
    records = sorted(r.source.rsplit(":", 1)[1] for batch in batches for r in batch.skipped)
    assert records == sorted(name[:6] for name in broken)
    assert sum(loader.skip_counts["unreadable image"] for loader in loaders) == 3


# ---------------------------------------------------------------------------------------------
# (c) N ranks with batch b == one process with batch N * b, bad samples included


@pytest.mark.parametrize("use_corrupt", [False, True], ids=["clean", "corrupt"])
def test_global_batches_of_two_ranks_equal_one_process_with_twice_the_batch(manifest, corrupt, use_corrupt):
    path = corrupt[0] if use_corrupt else manifest
    single = epoch(manifest_cfg(path, workers=0), 10, epoch=3)
    ranks = [epoch(manifest_cfg(path, workers=2), 5, epoch=3, rank=r, world_size=2) for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1])
    for k, whole in enumerate(single):
        parts = [ranks[0][k], ranks[1][k]]
        assert all(len(p) == 5 for p in parts) and len(whole) == 10
        assert torch.equal(torch.cat([p.indices for p in parts]), whole.indices)
        assert torch.equal(torch.cat([p.images for p in parts]), whole.images)
        assert torch.equal(torch.cat([p.texts for p in parts]), whole.texts)
        assert [r for p in parts for r in p.skipped] == whole.skipped
    if use_corrupt:
        assert sum(len(b.skipped) for b in single) > 0  # the comparison covered refilled places


# ---------------------------------------------------------------------------------------------
# (d) a refilled batch is full and its skip is counted


def test_refilled_batch_is_full_and_the_skip_is_counted(tmp_path):
    n, b, seed, ep = 40, 4, 5, 0
    order = epoch_batches(n, b, seed, ep, rank=0, world_size=1)
    slot = order[2][1]  # a sample in the middle of batch 2
    first = refill_index(n, seed, ep, slot, 1)
    second = refill_index(n, seed, ep, slot, 2)
    assert len({slot, first, second}) == 3
    path = write_files(labelled(n), tmp_path, fmt="csv", progress=False)
    break_files(tmp_path, {slot: "missing", first: "truncated"})  # the first substitute is bad too
    loader = load(manifest_cfg(path, workers=0), b, seed=seed, epoch=ep)
    batches = list(loader)
    assert [len(batch) for batch in batches] == [b] * (n // b)
    # The second substitute fills the place, in the same position of the batch.
    assert batches[2].indices.tolist() == [order[2][0], second, *order[2][2:]]
    assert keys_of(batches[2]) == batches[2].indices.tolist()
    (record,) = batches[2].skipped
    assert record.kind == "missing file" and record.source.endswith(f"{slot:06d}.png")
    # Each bad file is recorded once, in its own place: the failed substitute adds no record.
    assert loader.skip_counts == {"missing file": 1, "unreadable image": 1}
    entries = read_manifest(path)
    assert sorted(r.source for batch in batches for r in batch.skipped) == sorted(
        [entries[slot][0], entries[first][0]]
    )


def test_refill_gives_up_after_a_bounded_number_of_attempts(tmp_path, monkeypatch):
    from cliplab.data import loader as loader_module

    n, seed = 8, 5
    path = write_files(labelled(n), tmp_path, fmt="csv", progress=False)
    break_files(tmp_path, {i: "missing" for i in range(1, n)})  # only sample 0 is usable
    tried: Counter[int] = Counter()
    real = loader_module.refill_index

    def spy(n_: int, seed_: int, ep: int, index: int, attempt: int) -> int:
        tried[index] += 1
        return real(n_, seed_, ep, index, attempt)

    monkeypatch.setattr(loader_module, "refill_index", spy)
    loader = load(manifest_cfg(path, workers=0), n, seed=seed)
    (batch,) = list(loader)
    attempts = {i: [real(n, seed, 0, i, a) for a in range(1, MAX_REFILL_ATTEMPTS + 1)] for i in range(1, n)}
    filled = [i for i, subs in attempts.items() if 0 in subs]
    assert 0 < len(filled) < n - 1  # some places found sample 0, some gave up
    # A place is retried until the usable sample turns up or the attempts run out, never more.
    assert tried == {
        i: subs.index(0) + 1 if 0 in subs else MAX_REFILL_ATTEMPTS for i, subs in attempts.items()
    }
    assert batch.indices.tolist() == [0] * (1 + len(filled))  # the places that gave up stay empty
    assert loader.num_skipped == len(batch.skipped) == n - 1  # one record per unusable sample


# ---------------------------------------------------------------------------------------------
# (e) exact resume with bad samples


def test_resume_mid_epoch_gives_the_uninterrupted_batches_with_bad_samples(corrupt):
    cfg = manifest_cfg(corrupt[0], workers=2)
    for rank in range(2):
        full = epoch(cfg, 5, epoch=1, rank=rank, world_size=2)
        assert any(batch.skipped for batch in full[3:])
        resumed = epoch(cfg, 5, epoch=1, rank=rank, world_size=2, start_batch=3)
        assert len(resumed) == len(full) - 3
        for a, b in zip(full[3:], resumed, strict=True):
            assert a.position == b.position and a.skipped == b.skipped
            assert torch.equal(a.indices, b.indices) and torch.equal(a.images, b.images)


# ---------------------------------------------------------------------------------------------
# (f) resampled WebDataset streams: seeded per (seed, epoch, rank, worker)


def test_resampled_streams_differ_between_ranks_and_workers(tmp_path):
    write_webdataset(labelled(64), tmp_path, shard_size=8, progress=False)
    cfg = DataConfig(source="webdataset", path=str(tmp_path), resampled=True, num_samples=96, workers=2,
                     shuffle_buffer=0)  # fmt: skip

    def streams(rank: int, ep: int = 0) -> list[list[int]]:
        """Each worker's sample sequence (DataLoader takes batches from the workers in turn)."""
        batches = [keys_of(batch) for batch in load(cfg, 6, EVAL, rank=rank, world_size=2, epoch=ep)]
        assert len(batches) == 8
        return [sum(batches[w::2], []) for w in range(2)]

    rank0, rank1 = streams(0), streams(1)
    assert rank0 == streams(0)  # seeded: the same stream again
    assert rank0[0] != rank0[1] and rank1[0] != rank1[1]  # workers differ
    assert rank0[0] != rank1[0] and rank0[1] != rank1[1]  # ranks differ
    assert streams(0, ep=1) != rank0  # epochs differ


# ---------------------------------------------------------------------------------------------
# pinned memory for CUDA training


def test_pin_memory_reaches_the_dataloader(manifest, tmp_path):
    write_webdataset(labelled(16), tmp_path, shard_size=8, progress=False)
    sources = [
        manifest_cfg(manifest, workers=0),
        DataConfig(source="webdataset", path=str(tmp_path), workers=0),
    ]
    for cfg in sources:
        assert load(cfg, 4).loader.pin_memory is False
        assert load(cfg, 4, pin_memory=True).loader.pin_memory is True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_pinned_batches_arrive_in_page_locked_memory(manifest):
    batch = next(iter(load(manifest_cfg(manifest, workers=2), 4, pin_memory=True)))
    assert batch.images.is_pinned() and batch.texts.is_pinned() and batch.indices.is_pinned()
    assert not next(iter(load(manifest_cfg(manifest, workers=0), 4))).images.is_pinned()
