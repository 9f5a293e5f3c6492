"""Training data loading: manifests, WebDataset shards and the synthetic source behind one loader."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import torch

from cliplab.data import DataConfig, ManifestError, build_train_loader, read_manifest
from cliplab.data.samples import mix_seed
from cliplab.data.synthetic import SyntheticCaptions
from cliplab.data.writers import write_files, write_webdataset
from cliplab.tokenizer import tokenize
from cliplab.transforms import image_transform, to_tensor_normalized

SIZE = 32
N = 64

EVAL = image_transform(SIZE)  # deterministic: no augmentation
TRAIN = image_transform(SIZE, train=True, crop_scale=(0.3, 1.0))


@pytest.fixture(scope="module")
def samples():
    data = SyntheticCaptions(N, seed=0, image_size=SIZE)
    return [data[i] for i in range(N)]


@pytest.fixture(scope="module")
def written(samples, tmp_path_factory):
    root = tmp_path_factory.mktemp("written")
    manifest = write_files(samples, root / "files", fmt="csv")
    shards = write_webdataset(samples, root / "shards", shard_size=16)
    return manifest, shards


def load(cfg: DataConfig, transform=TRAIN, batch_size: int = 16, **kw):
    kw = {"seed": 0, "epoch": 0, "image_size": SIZE} | kw
    return build_train_loader(cfg, transform=transform, tokenize=tokenize, batch_size=batch_size, **kw)


def manifest_cfg(path, workers: int = 0, **kw) -> DataConfig:
    return DataConfig(source="manifest", path=str(path), workers=workers, **kw)


def assert_same_batches(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.indices, y.indices)
        assert torch.equal(x.texts, y.texts)
        assert torch.equal(x.images, y.images)
        assert x.position == y.position


def image_key(pixels: torch.Tensor) -> str:
    return hashlib.sha1(pixels.numpy().tobytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Manifest parsing


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_read_manifest_formats_custom_columns_and_paths(tmp_path, fmt):
    absolute = str(tmp_path / "elsewhere" / "b.png")
    rows = [("imgs/a.png", 'a "quoted", comma caption'), (absolute, "second"), ("c.png", "")]
    path = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        lines = [json.dumps({"extra": 1, "img": p, "text": c}) for p, c in rows]
        path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    else:
        import csv

        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="," if fmt == "csv" else "\t")
            writer.writerow(["text", "other", "img"])
            for p, c in rows:
                writer.writerow([c, "x", p])
    entries = read_manifest(path, image_key="img", caption_key="text")
    assert entries == [
        (str(tmp_path.resolve() / "imgs" / "a.png"), 'a "quoted", comma caption'),
        (absolute, "second"),
        (str(tmp_path.resolve() / "c.png"), ""),  # empty caption: kept here, skipped by the loader
    ]


@pytest.mark.parametrize(
    "name, text, where, words",
    [
        ("m.csv", "filepath,caption\na.png,one\nb.png,two,three\n", ":3:", "expected 2"),
        ("m.csv", 'filepath,caption\na.png,"multi\nline"\nb.png\n', ":4:", "found 1"),
        (
            "m.csv",
            "\nfile,caption\na.png,one\n",
            ":2:",
            "no image column (looked for 'filepath', 'path', 'image')",
        ),
        ("m.tsv", "filepath\tcaption\na.png\tone\n\tempty path\n", ":3:", "empty image path"),
        ("m.jsonl", '{"filepath": "a.png", "caption": "x"}\n{"filepath": "b.png", \n', ":2:", "invalid JSON"),
        (
            "m.jsonl",
            '{"filepath": "a.png", "caption": "x"}\n\n{"caption": "y"}\n',
            ":3:",
            "no key 'filepath'; this line has keys ['caption']",
        ),
        ("m.jsonl", '["a.png", "x"]\n', ":1:", "JSON object"),
        ("m.jsonl", '{"filepath": 3, "caption": "x"}\n', ":1:", "must be a string"),
    ],
)
def test_malformed_manifest_names_file_and_line(tmp_path, name, text, where, words):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    assert f"{name}{where}" in str(info.value) and words in str(info.value)
    # The loader validates at construction, before any training step.
    with pytest.raises(ManifestError, match=name):
        load(manifest_cfg(path))


def test_manifest_unknown_extension_and_missing_file(tmp_path):
    (tmp_path / "m.txt").write_text("filepath,caption\n", encoding="utf-8")
    with pytest.raises(ManifestError, match="extension"):
        read_manifest(tmp_path / "m.txt")
    with pytest.raises(ManifestError, match="nope.csv does not exist"):
        read_manifest(tmp_path / "nope.csv")


def test_data_config_validation_names_the_field():
    with pytest.raises(ValueError, match="DataConfig.source"):
        DataConfig(source="folder")
    with pytest.raises(ValueError, match="DataConfig.path"):
        DataConfig(source="manifest")
    with pytest.raises(ValueError, match="DataConfig.workers"):
        DataConfig(workers=-1)
    with pytest.raises(ValueError, match="resampled"):
        DataConfig(source="synthetic", resampled=True)
    with pytest.raises(ValueError, match="DataConfig.synthetic_size"):
        DataConfig(synthetic_size=0)


def test_a_path_with_the_synthetic_source_is_refused_not_ignored(tmp_path):
    from cliplab.errors import UsageError

    with pytest.raises(UsageError, match=r"data\.path.*data\.source.*'synthetic'") as info:
        DataConfig(source="synthetic", path=str(tmp_path / "train.csv"))
    assert "\n" not in str(info.value)
    with pytest.raises(UsageError, match=r"data\.path"):
        DataConfig(path=[str(tmp_path / "a.tar")])  # source defaults to synthetic
    assert DataConfig(source="synthetic", path=None).path is None


# ---------------------------------------------------------------------------------------------
# Bad samples: skipped, counted, recorded


def corrupt_copy(samples, root: Path):
    """A manifest of 100 samples with ~10% bad ones; returns (manifest, {bad path: reason kind})."""
    many = [samples[i % N] for i in range(100)]
    manifest = write_files(many, root, fmt="csv")
    rows = (manifest.read_text(encoding="utf-8")).splitlines()
    bad = {}
    for i in (3, 17, 42):  # truncated PNG
        p = root / f"images/{i:06d}.png"
        p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
        bad[str(p.resolve())] = "unreadable image"
    for i in (5, 61, 88):  # a text file named .png
        p = root / f"images/{i:06d}.png"
        p.write_text("this is not an image", encoding="utf-8")
        bad[str(p.resolve())] = "unreadable image"
    for i in (9, 70, 99):  # missing file
        p = root / f"images/{i:06d}.png"
        p.unlink()
        bad[str(p.resolve())] = "missing file"
    rows[1 + 50] = "images/000050.png,"  # empty caption
    bad[str((root / "images/000050.png").resolve())] = "empty caption"
    manifest.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return manifest, bad


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_and_missing_files_are_skipped_counted_and_refilled(samples, tmp_path, workers):
    manifest, bad = corrupt_copy(samples, tmp_path)
    loader = load(manifest_cfg(manifest, workers), batch_size=10)
    batches = list(loader)
    assert len(batches) == loader.num_batches == 10
    entries = read_manifest(manifest)
    bad_indices = {i for i, (p, _) in enumerate(entries) if p in bad}
    seen = torch.cat([b.indices for b in batches]).tolist()
    # Every place of a bad sample went to a usable substitute: full batches, no bad index in them,
    # and every good sample still read; the 10 substitutes are extra reads of good samples.
    assert [len(b) for b in batches] == [10] * 10
    assert not set(seen) & bad_indices and set(seen) == set(range(100)) - bad_indices
    assert len(seen) - len(set(seen)) == len(bad)
    records = [r for b in batches for r in b.skipped]
    assert {r.source: r.kind for r in records} == bad and len(records) == len(bad)
    assert loader.num_skipped == 10
    assert loader.skip_counts == {"unreadable image": 6, "missing file": 3, "empty caption": 1}
    moved = batches[1].to("cpu")
    assert torch.equal(moved.images, batches[1].images) and moved.skipped == batches[1].skipped
    assert moved.position == 1


def test_all_skipped_batch_is_yielded_empty_with_its_records(tmp_path):
    lines = ["filepath,caption"] + [f"gone{i}.png,a caption" for i in range(8)]
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    batches = list(load(manifest_cfg(tmp_path / "m.csv"), batch_size=4))
    assert [len(b) for b in batches] == [0, 0]
    assert batches[0].images.shape == (0, 3, SIZE, SIZE) and batches[0].texts.shape == (0, 77)
    assert [b.position for b in batches] == [0, 1]
    assert sorted(r.source for b in batches for r in b.skipped) == sorted(
        str((tmp_path / f"gone{i}.png").resolve()) for i in range(8)
    )


# ---------------------------------------------------------------------------------------------
# The same data three ways


def test_manifest_webdataset_and_synthetic_give_the_same_samples(written):
    manifest, shards = written
    synthetic = list(load(DataConfig(synthetic_size=N, workers=0), EVAL))
    from_files = list(load(manifest_cfg(manifest), EVAL))
    # Same dataset size and seed: the same permutation, so identical batches, pixel for pixel.
    assert_same_batches(synthetic, from_files)

    # No shuffle buffer: a buffer carries the end of one pass over the shards into the next.
    wds_cfg = DataConfig(source="webdataset", path=str(shards[0].parent), workers=2, shuffle_buffer=0)
    from_shards = list(load(wds_cfg, EVAL))
    assert len(from_shards) == N // 16 and all(b.indices.eq(-1).all() for b in from_shards)

    def pairs(batches):
        return sorted(
            (tuple(t.tolist()), image_key(i)) for b in batches for t, i in zip(b.texts, b.images, strict=True)
        )

    assert pairs(from_shards) == pairs(synthetic)


# ---------------------------------------------------------------------------------------------
# Determinism and exact resume


class CountingTransform:
    """The train transform, counting its calls (workers=0 only)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, img, generator=None):
        self.calls += 1
        return TRAIN(img, generator=generator)


class NoGeneratorTransform:
    """A transform that draws from torch's global RNG (no generator argument)."""

    def __call__(self, img):
        return to_tensor_normalized(img.resize((SIZE, SIZE))) + torch.rand(())


@pytest.mark.parametrize("transform", [TRAIN, NoGeneratorTransform()], ids=["generator", "global-rng"])
def test_batches_are_deterministic_and_independent_of_workers(written, transform):
    cfg0, cfg2 = manifest_cfg(written[0], 0), manifest_cfg(written[0], 2)
    first = list(load(cfg0, transform, seed=3, epoch=1))
    assert_same_batches(first, list(load(cfg0, transform, seed=3, epoch=1)))
    assert_same_batches(first, list(load(cfg2, transform, seed=3, epoch=1)))
    other_epoch = list(load(cfg0, transform, seed=3, epoch=2))
    assert not torch.equal(first[0].indices, other_epoch[0].indices)
    # Augmentation really is random per sample and epoch: a sample's pixels change between epochs.
    i = int(first[0].indices[0])
    j = next((b, k) for b in other_epoch for k, x in enumerate(b.indices.tolist()) if x == i)
    assert not torch.equal(first[0].images[0], j[0].images[j[1]])


def test_start_batch_reproduces_the_rest_of_the_epoch_without_decoding_the_start(written):
    cfg = manifest_cfg(written[0])
    full = list(load(cfg, seed=7, epoch=4))
    counting = CountingTransform()
    resumed_loader = load(cfg, counting, seed=7, epoch=4, start_batch=2)
    calls_at_build = counting.calls  # one probe call for empty-batch shapes
    resumed = list(resumed_loader)
    assert len(resumed_loader) == len(resumed) == 2 and resumed_loader.num_batches == 4
    assert_same_batches(full[2:], resumed)
    assert counting.calls - calls_at_build == 2 * 16
    assert list(load(cfg, start_batch=4)) == []
    with pytest.raises(ValueError, match="start_batch"):
        load(cfg, start_batch=5)


def test_rank_split_is_disjoint_and_covers_the_epoch_minus_remainder():
    cfg = DataConfig(synthetic_size=100, workers=0)
    ranks = [list(load(cfg, batch_size=16, rank=r, world_size=2, seed=1)) for r in range(2)]
    assert [len(b) for b in ranks] == [3, 3]  # 100 // (2 * 16) batches each; 4 samples dropped
    seen = [set(torch.cat([b.indices for b in batches]).tolist()) for batches in ranks]
    assert not seen[0] & seen[1]
    everything = torch.randperm(100, generator=torch.Generator().manual_seed(mix_seed(1, 0))).tolist()
    assert seen[0] | seen[1] == set(everything[:96])


# ---------------------------------------------------------------------------------------------
# WebDataset


def rewrite_shard(path: Path, edit) -> None:
    """Rewrite a tar shard, passing each (name, bytes) member through edit (None drops it)."""
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            data = edit(name, data)
            if data is not None:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_broken_members_are_skipped_and_counted(samples, tmp_path):
    shards = write_webdataset(samples, tmp_path, shard_size=16)
    rewrite_shard(shards[1], lambda n, d: b"garbage" if n == "000017.png" else d)
    rewrite_shard(shards[2], lambda n, d: None if n == "000035.txt" else d)
    loader = load(DataConfig(source="webdataset", path=str(tmp_path), workers=0, shuffle_buffer=0))
    batches = list(loader)
    # The next usable samples of the stream take the broken ones' places: full batches, and the
    # stream ends one batch short of sizes.json's 4 (its last 14 samples are the remainder).
    assert loader.num_batches == 4 and [len(b) for b in batches] == [16, 16, 16]
    records = sorted((r.source, r.kind) for b in batches for r in b.skipped)
    assert records == [
        (f"{shards[1]}:000017", "unreadable image"),
        (f"{shards[2]}:000035", "missing caption"),
    ]
    assert loader.num_skipped == 2


def test_webdataset_truncated_shard_is_recorded(samples, tmp_path):
    (shard,) = write_webdataset(samples[:16], tmp_path, shard_size=16)
    data = shard.read_bytes()
    with tarfile.open(shard) as tar:
        offsets = {m.name: m.offset_data for m in tar.getmembers()}
    cfg = DataConfig(source="webdataset", path=[str(shard)], num_samples=10, workers=0, shuffle_buffer=0)
    # Cut inside member 000005.png: the tar reader fails ("unexpected end of data"). An epoch is
    # one pass, so the shard is read once: one batch, and the failure found after it travels in it.
    shard.write_bytes(data[: offsets["000005.png"] + 100])
    batches = list(load(cfg, batch_size=5))
    assert [len(b) for b in batches] == [5]
    assert [(r.source, r.kind) for r in batches[0].skipped] == [(str(shard), "broken tar")]
    # Cut at a member boundary: tarfile stops quietly, sizes.json reveals the missing samples.
    shard.write_bytes(data[: offsets["000005.png"] - 512])
    records = [r for b in load(cfg, batch_size=5) for r in b.skipped]
    assert [(r.source, r.reason) for r in records] == [
        (str(shard), "short shard: read 5 of 16 samples (truncated or corrupt tar)")
    ]


def test_webdataset_ranks_get_disjoint_shards_and_patterns_resolve(written):
    shards = written[1]
    pattern = str(shards[0].parent / "shard-{000000..000003}.tar")
    seen = []
    for rank in range(2):
        cfg = DataConfig(source="webdataset", path=pattern, workers=2, shuffle_buffer=0)
        batches = list(load(cfg, EVAL, batch_size=8, rank=rank, world_size=2))
        assert len(batches) == N // 16
        seen.append({image_key(i) for b in batches for i in b.images})
    assert len(seen[0]) == len(seen[1]) == N // 2 and not seen[0] & seen[1]


def test_webdataset_shuffle_buffer_mixes_samples(written, samples):
    shards = [str(s) for s in written[1]]
    plain = list(load(DataConfig(source="webdataset", path=shards, workers=0, shuffle_buffer=0), EVAL))
    mixed = list(load(DataConfig(source="webdataset", path=shards, workers=0, shuffle_buffer=64), EVAL))
    originals = {image_key(EVAL(s.image)) for s in samples}
    assert {image_key(i) for b in mixed for i in b.images} <= originals
    assert len({image_key(i) for b in plain for i in b.images}) == N
    assert not torch.equal(plain[0].images, mixed[0].images)


def test_webdataset_resampled_and_approximate_resume(written):
    shards = [str(s) for s in written[1]]
    cfg = DataConfig(source="webdataset", path=shards, resampled=True, num_samples=200, workers=0)
    loader = load(cfg, batch_size=16)
    assert loader.num_batches == 12 and len(list(loader)) == 12
    cfg = DataConfig(source="webdataset", path=shards, workers=2, shuffle_buffer=8)
    full, resumed = list(load(cfg)), list(load(cfg, start_batch=2))
    assert [b.position for b in resumed] == [2, 3]
    # Seeded worker streams, taken in turn: same shards and workers give the same stream.
    assert_same_batches(full[2:], resumed)
    with pytest.raises(ValueError, match="cannot be split"):
        load(DataConfig(source="webdataset", path=shards[:1], num_samples=64, workers=0), world_size=2)


def test_synthetic_cache_gives_the_same_batches_as_rendering_on_the_fly():
    kw = dict(source="synthetic", synthetic_size=96, synthetic_seed=3, workers=0)
    cached = load(DataConfig(**kw, synthetic_cache=True), image_size=32)
    fresh = load(DataConfig(**kw), image_size=32)
    assert_same_batches(cached, fresh)


class DecodeSpy:
    """Records the size of every image Pillow decodes (``ImageFile.load``), in this process."""

    def __init__(self, monkeypatch) -> None:
        from PIL import ImageFile

        self.sizes: list[tuple[int, int]] = []
        real = ImageFile.ImageFile.load

        def load(img):
            self.sizes.append(img.size)
            return real(img)

        monkeypatch.setattr(ImageFile.ImageFile, "load", load)


def bomb_png(side: int = 48) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (9, 9, 9)).save(buf, format="PNG")
    return buf.getvalue()


def test_webdataset_decompression_bomb_is_skipped_and_counted_not_decoded(samples, tmp_path, monkeypatch):
    import warnings

    from PIL import Image

    (shard,) = write_webdataset(samples[:16], tmp_path, shard_size=16)
    rewrite_shard(shard, lambda n, d: bomb_png() if n == "000003.png" else d)
    # 48x48 = 2304 pixels: over the limit but under twice it, where Pillow itself only warns.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1600)
    spy = DecodeSpy(monkeypatch)
    cfg = DataConfig(source="webdataset", path=str(tmp_path), workers=0, shuffle_buffer=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        loader = load(cfg, EVAL, batch_size=8)
        batches = list(loader)
    assert [len(b) for b in batches] == [8]  # 15 usable samples: one full batch, 7 left over
    (record,) = [r for b in batches for r in b.skipped]
    assert record.source == f"{shard}:000003" and record.kind == "unreadable image"
    assert "MAX_IMAGE_PIXELS" in record.reason and "000003" in record.reason
    assert loader.skip_counts == {"unreadable image": 1}
    assert (32, 32) in spy.sizes and (48, 48) not in spy.sizes  # the bomb's pixels were never decoded


# ---------------------------------------------------------------------------------------------
# Shard specs: one expansion (webdataset's) for training and evaluation


def test_shard_specs_expand_with_webdatasets_own_rules(written):
    import webdataset

    from cliplab.data.wds import resolve_shards
    from cliplab.errors import UsageError

    shards = [str(s) for s in written[1]]
    folder = written[1][0].parent
    assert resolve_shards(str(folder)) == shards  # a directory: its *.tar, sorted
    for pattern in ("shard-{000000..000003}.tar", "shard-{000002,000000}.tar", "shard-00000{1..2}.tar"):
        spec = str(folder / pattern)
        assert resolve_shards(spec) == webdataset.shardlists.expand_urls(spec)
    assert resolve_shards(str(folder / "shard-{000002,000000}.tar")) == [shards[2], shards[0]]
    assert resolve_shards(f"{shards[1]}::{shards[0]}") == [shards[1], shards[0]]
    nothing = str(folder / "shard-{000010..000012}.tar")
    with pytest.raises(UsageError, match=r"no shard file matches '.*shard-\{000010\.\.000012\}\.tar'"):
        resolve_shards(nothing)
    with pytest.raises(
        UsageError, match=r"2 of the 6 shards named by '.*\{000000\.\.000005\}.*' do not exist"
    ):
        resolve_shards(str(folder / "shard-{000000..000005}.tar"))
    with pytest.raises(UsageError, match="no shard file matches"):  # the error reaches training too
        load(DataConfig(source="webdataset", path=nothing, num_samples=16, workers=0))
    with pytest.raises(UsageError, match=r"no \*\.tar shards in directory"):
        resolve_shards(str(folder.parent))


# ---------------------------------------------------------------------------------------------
# Module structure: no import cycle in cliplab.data


DATA_DIR = Path(__file__).resolve().parents[1] / "src" / "cliplab" / "data"


def _eager_imports(path: Path) -> set[str]:
    """cliplab.data modules that ``path`` imports when it is imported (function bodies are lazy)."""
    import ast

    modules = {p.stem for p in DATA_DIR.glob("*.py")}
    found: set[str] = set()

    def target(name: str) -> None:
        parts = name.split(".")
        if parts[:2] == ["cliplab", "data"]:
            found.add(parts[2] if len(parts) > 2 and parts[2] in modules else "__init__")

    class Visitor(ast.NodeVisitor):
        def visit_FunctionDef(self, node):  # imports inside functions run later, lazily
            pass

        visit_AsyncFunctionDef = visit_Lambda = visit_FunctionDef

        def visit_Import(self, node):
            for alias in node.names:
                target(alias.name)

        def visit_ImportFrom(self, node):
            if node.level == 0:
                base = node.module or ""
            else:  # relative to cliplab.data (every module here lives in that package)
                base = ".".join(
                    ["cliplab", "data"][: 3 - node.level] + ([node.module] if node.module else [])
                )
            if node.module is None and base == "cliplab.data":  # from . import x
                for alias in node.names:
                    target(f"cliplab.data.{alias.name}")
            else:
                target(base)

    Visitor().visit(ast.parse(path.read_text(encoding="utf-8")))
    found.discard(path.stem)
    return found


def test_data_modules_have_no_import_cycle():
    graph = {p.stem: _eager_imports(p) for p in DATA_DIR.glob("*.py")}
    assert "samples" in graph["wds"] and "loader" not in graph["wds"]
    assert "wds" not in graph["loader"] and "loader" not in graph["samples"]

    def cycle_from(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        for nxt in sorted(graph.get(node, ())):
            found = cycle_from(nxt, path + [node])
            if found:
                return found
        return None

    for module in graph:
        assert cycle_from(module, []) is None, f"import cycle: {' -> '.join(cycle_from(module, []))}"


@pytest.mark.parametrize("module", sorted(p.stem for p in DATA_DIR.glob("*.py") if p.stem != "__init__"))
def test_each_data_module_imports_alone_in_a_fresh_interpreter(module):
    import subprocess
    import sys

    code = f"import cliplab.data.{module}"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_webdataset_package_is_needed_only_to_stream_or_expand_patterns(written, tmp_path):
    import subprocess
    import sys

    folder = str(written[1][0].parent)
    code = (
        "import sys; sys.modules['webdataset'] = None\n"  # as if it were not installed
        "from cliplab.data.wds import resolve_shards\n"
        "import cliplab.evaluation.datasets\n"
        f"assert len(resolve_shards({folder!r})) == 4\n"
        "from cliplab.errors import UsageError\n"
        "try:\n"
        f"    resolve_shards({folder!r} + '/shard-{{000000..000001}}.tar')\n"
        "except UsageError as e:\n"
        "    assert 'webdataset' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('a brace pattern expanded without webdataset')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# Reduced-scale JPEG decoding (DataConfig.reduced_decode)


@pytest.fixture(scope="module")
def big_jpegs(samples, tmp_path_factory):
    """A manifest of 16 JPEGs at 256-400 px (the samples scaled up, plus mild noise)."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("big_jpegs")
    rng = np.random.default_rng(0)
    lines = ["filepath,caption"]
    for i, s in enumerate(samples[:16]):
        w, h = 256 + 16 * i % 144, 300 + 8 * i % 100
        pixels = np.asarray(s.image.convert("RGB").resize((w, h)), dtype=np.float32)
        pixels += rng.normal(0, 3, pixels.shape)
        path = root / f"{i}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        lines.append(f"{path},{s.caption.replace(',', ' ')}")
    (root / "m.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root / "m.csv"


class FullDecodeTransform:
    """TRAIN without its ``decode`` method: every image decoded in full, then transformed."""

    def __call__(self, img, generator=None):
        return TRAIN(img, generator=generator)


def test_reduced_decode_switch(big_jpegs):
    assert DataConfig().reduced_decode  # on by default
    exact = list(load(manifest_cfg(big_jpegs, reduced_decode=False), batch_size=8))
    assert_same_batches(exact, list(load(manifest_cfg(big_jpegs), FullDecodeTransform(), batch_size=8)))
    fast = list(load(manifest_cfg(big_jpegs, workers=2), batch_size=8))
    assert len(fast) == len(exact) == 2
    for a, b in zip(fast, exact, strict=True):
        assert torch.equal(a.indices, b.indices) and torch.equal(a.texts, b.texts)
        assert not torch.equal(a.images, b.images)  # the JPEGs were decoded at reduced scale
        grey = (a.images - b.images).abs() * torch.tensor([0.2686, 0.2613, 0.2758]).view(3, 1, 1) * 255
        assert grey.mean(dim=(1, 2, 3)).max() < 1.0  # the same crops, within a grey level on average


def test_reduced_decode_skips_bad_files_like_the_full_decode(big_jpegs, tmp_path):
    lines = big_jpegs.read_text(encoding="utf-8").splitlines()
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    lines[1] = f"{bad},broken"
    lines[2] = f"{tmp_path / 'gone.jpg'},missing"
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    for reduced in (True, False):
        loader = load(manifest_cfg(manifest, reduced_decode=reduced), batch_size=8)
        assert all(len(b) == 8 for b in loader)
        assert dict(loader.skip_counts) == {"unreadable image": 1, "missing file": 1}


def test_reduced_decode_config_key(tmp_path):
    from cliplab.errors import UsageError
    from cliplab.training.config import load_config

    cfg = load_config(None, {"data": {"source": "manifest", "path": "x.csv", "reduced_decode": False}})
    assert cfg.data.reduced_decode is False
    assert load_config(None, ["data.source=manifest", "data.path=x.csv"]).data.reduced_decode is True
    with pytest.raises(UsageError, match="reduced_decode must be true or false"):
        load_config(None, {"data": {"source": "manifest", "path": "x.csv", "reduced_decode": "yes"}})
