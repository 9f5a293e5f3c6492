"""Repeated work removed: one read of a checkpoint's weights per load, no re-hash of an unchanged
download, a feature-cache key that does not hash every weight on every call.

Each fast path is checked against the plain one: the same model as reading the file the slow way, the
same verified file, the same key as ``model_fingerprint`` and features equal to uncached ones.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import warnings
from collections import Counter
from pathlib import Path

import pytest
import safetensors
import torch
from PIL import Image
from safetensors.torch import save_file
from test_checkpoints import REF_VIT, reference_clip, save_jit_archive

from cliplab.checkpoints import detect_format, load_checkpoint, save_checkpoint
from cliplab.checkpoints import download as downloads
from cliplab.checkpoints.hf import save_hf_checkpoint, to_hf_config, to_hf_state_dict
from cliplab.evaluation import features as feature_cache
from cliplab.evaluation.datasets import InMemoryDataset
from cliplab.export.formats import export_open_clip
from cliplab.inference import model_fingerprint
from cliplab.models import CLIP, get_config

# --- one read of the weights per load ---------------------------------------------------------------


@pytest.fixture(scope="module")
def micro() -> CLIP:
    torch.manual_seed(0)
    return CLIP(get_config("micro")).eval()


class ReadCounter:
    """Counts the low-level reads of weights: torch.load, safetensors' safe_open, TorchScript data entries."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.files: Counter[str] = Counter()  # path -> torch.load / safe_open calls
        self.entries: Counter[str] = Counter()  # TorchScript archive entry -> times opened
        real_load, real_open = torch.load, safetensors.safe_open
        real_zip_open = __import__("zipfile").ZipFile.open

        def load(f, *args, **kwargs):
            self.files[os.path.realpath(f)] += 1
            return real_load(f, *args, **kwargs)

        def safe_open(f, *args, **kwargs):
            self.files[os.path.realpath(f)] += 1
            return real_open(f, *args, **kwargs)

        def zip_open(zf, name, *args, **kwargs):
            entry = getattr(name, "filename", name)
            if "/data/" in entry:
                self.entries[entry] += 1
            return real_zip_open(zf, name, *args, **kwargs)

        monkeypatch.setattr(torch, "load", load)
        monkeypatch.setattr(safetensors, "safe_open", safe_open)
        monkeypatch.setattr("zipfile.ZipFile.open", zip_open)


def _same_weights(model: CLIP, reference: CLIP) -> None:
    ours, theirs = model.state_dict(), reference.state_dict()
    assert sorted(ours) == sorted(theirs)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key].to(ours[key].dtype)), key


def _write_torch(sd: dict, path: Path, legacy: bool = False) -> Path:
    torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
    return path


def _formats(model: CLIP, tmp: Path) -> dict[str, tuple[Path, str, Path]]:
    """name -> (what to load, its format, the file holding its weights), one per way to store a model."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    out = {}
    out["openai state dict"] = (_write_torch(sd, tmp / "sd.pt"), "openai", tmp / "sd.pt")
    out["legacy torch file"] = (_write_torch(sd, tmp / "old.pt", legacy=True), "openai", tmp / "old.pt")
    save_file(sd, str(tmp / "plain.safetensors"))
    out["plain safetensors"] = (tmp / "plain.safetensors", "openai", tmp / "plain.safetensors")
    train = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in sd.items()}, "optimizer": {}}
    out["open_clip training checkpoint"] = (_write_torch(train, tmp / "ep.pt"), "open_clip", tmp / "ep.pt")
    hub = export_open_clip(model, tmp / "hub")
    out["open_clip hub export"] = (hub, "open_clip", hub / "open_clip_model.safetensors")
    out["cliplab directory"] = (
        save_checkpoint(model, tmp / "ours"),
        "cliplab",
        tmp / "ours/model.safetensors",
    )
    lone = save_checkpoint(model, tmp / "lone.safetensors")
    out["cliplab file"] = (lone, "cliplab", lone)
    hf = save_hf_checkpoint(model, tmp / "hf")
    out["hf safetensors"] = (hf, "hf", hf / "model.safetensors")
    (tmp / "hfbin").mkdir()
    (tmp / "hfbin/config.json").write_text(json.dumps(to_hf_config(model.config)))
    _write_torch(to_hf_state_dict(model), tmp / "hfbin/pytorch_model.bin")
    out["hf pytorch_model.bin"] = (tmp / "hfbin", "hf", tmp / "hfbin/pytorch_model.bin")
    return out


FORMAT_CASES = [
    "openai state dict",
    "legacy torch file",
    "plain safetensors",
    "open_clip training checkpoint",
    "open_clip hub export",
    "cliplab directory",
    "cliplab file",
    "hf safetensors",
    "hf pytorch_model.bin",
]


@pytest.fixture(scope="module")
def stored(micro, tmp_path_factory):
    return _formats(micro, tmp_path_factory.mktemp("formats"))


@pytest.mark.parametrize("case", FORMAT_CASES)
def test_each_format_reads_its_weights_once(case, stored, micro, monkeypatch):
    target, fmt, weights = stored[case]
    assert detect_format(target) == fmt
    reads = ReadCounter(monkeypatch)
    model, _ = load_checkpoint(target)
    assert dict(reads.files) == {os.path.realpath(weights): 1}, case
    _same_weights(model, micro)


def test_openai_archive_reads_each_tensor_once(tmp_path, monkeypatch):
    reference = reference_clip(REF_VIT)
    path = save_jit_archive(copy.deepcopy(reference), tmp_path / "ViT.pt", 32)
    reads = ReadCounter(monkeypatch)
    model, _ = load_checkpoint(path)
    assert not reads.files  # neither torch.load nor safetensors: the tensor-only archive reader
    assert reads.entries and set(reads.entries.values()) == {1}, reads.entries
    ref_sd = {k: v for k, v in reference.state_dict().items() if k in model.state_dict()}
    for key, value in ref_sd.items():
        assert torch.equal(model.state_dict()[key], value.float()), key


def test_detection_alone_still_refuses_what_it_cannot_place(tmp_path):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(Exception, match="unrecognised"):
        load_checkpoint(tmp_path / "other.pt")


# --- a cached download is hashed again only when its size or times changed -------------------------


@pytest.fixture
def remote(tmp_path):
    """A 'remote' file behind a file:// URL whose second-to-last component is its SHA256, as OpenAI's."""
    data = os.urandom(300_000)
    sha = hashlib.sha256(data).hexdigest()
    (tmp_path / "www" / sha).mkdir(parents=True)
    (tmp_path / "www" / sha / "weights.pt").write_bytes(data)
    return (tmp_path / "www" / sha / "weights.pt").as_uri(), data, tmp_path / "cache"


@pytest.fixture
def hashes(monkeypatch):
    calls: list[Path] = []
    real = downloads.sha256_file

    def counting(path):
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(downloads, "sha256_file", counting)
    return calls


def test_second_load_of_a_download_does_not_hash(remote, hashes):
    url, data, cache = remote
    path = downloads.download(url, cache, progress=False)
    assert path.read_bytes() == data and hashes == []  # hashed while downloading, not read back
    sidecar = json.loads(downloads.sidecar_path(path).read_text())
    assert sidecar["sha256"] == hashlib.sha256(data).hexdigest() and sidecar["size"] == len(data)
    for _ in range(3):
        assert downloads.download(url, cache, progress=False) == path
    assert hashes == []


def test_touched_file_is_hashed_again_once(remote, hashes):
    url, data, cache = remote
    path = downloads.download(url, cache, progress=False)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert downloads.download(url, cache, progress=False) == path
    assert hashes == [path]
    downloads.download(url, cache, progress=False)
    assert hashes == [path]  # the new times were remembered with the hash


def test_altered_file_with_same_size_and_mtime_is_caught(remote, hashes):
    url, data, cache = remote
    path = downloads.download(url, cache, progress=False)
    st = path.stat()
    corrupt = bytearray(data)
    corrupt[1000] ^= 0xFF
    path.write_bytes(bytes(corrupt))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime: only the ctime moved
    with pytest.warns(UserWarning, match="SHA256 does not match"):
        assert downloads.download(url, cache, progress=False) == path
    assert path.read_bytes() == data and len(hashes) == 1
    downloads.download(url, cache, progress=False)
    assert len(hashes) == 1


def test_replaced_or_corrupt_sidecar_means_a_hash(remote, hashes):
    url, data, cache = remote
    path = downloads.download(url, cache, progress=False)
    downloads.sidecar_path(path).write_text("{not json")
    assert downloads.download(url, cache, progress=False) == path and hashes == [path]
    downloads.sidecar_path(path).unlink()
    assert downloads.download(url, cache, progress=False) == path and hashes == [path, path]
    # a file replaced by another of the same size: a new inode and ctime, so it is hashed and refused
    other = path.with_name("other")
    other.write_bytes(os.urandom(len(data)))
    os.replace(other, path)
    with pytest.warns(UserWarning, match="SHA256 does not match"):
        downloads.download(url, cache, progress=False)
    assert path.read_bytes() == data


def test_cached_file_without_sidecar_is_verified_then_remembered(remote, hashes):
    url, data, cache = remote
    cache.mkdir()
    (cache / "weights.pt").write_bytes(data)  # put there by hand, as the offline error suggests
    assert downloads.download(url, cache, progress=False).read_bytes() == data
    downloads.download(url, cache, progress=False)
    assert len(hashes) == 1


# --- the feature cache's model identity ------------------------------------------------------------


@pytest.fixture
def fingerprints(monkeypatch):
    """Counts the full SHA-256 passes over the weights that cache_key makes."""
    calls = []

    def counting(model):
        calls.append(model)
        return model_fingerprint(model)

    monkeypatch.setattr(feature_cache, "model_fingerprint", counting)
    return calls


class _Named:
    def fingerprint(self) -> str:
        return "dataset"


def _tiny() -> CLIP:
    torch.manual_seed(1)
    return CLIP(get_config("micro")).eval()


def test_key_is_stable_without_rehashing(fingerprints):
    model = _tiny()
    keys = {feature_cache.cache_key(model, _Named()) for _ in range(5)}
    assert len(keys) == 1 and len(fingerprints) == 1
    assert feature_cache.model_identity(model) == model_fingerprint(model)  # the plain identity
    # the key is content-based: a copy with the same weights shares the cache
    assert feature_cache.cache_key(copy.deepcopy(model), _Named()) == keys.pop()


def _fused_adamw_step(model, images: bool = False):
    """One step of the trainer's optimiser: fused AdamW leaves the version counters alone."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    if images:
        size = model.config.vision.image_size
        model.encode_image(torch.randn(2, 3, size, size)).square().sum().backward()
    else:
        model.logit_scale.sum().backward()  # only logit_scale moves (the others have no gradient)
    opt.step()
    model.zero_grad()


def _foreach_sgd_step(model):
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, foreach=True)
    model.encode_text(torch.randint(0, 100, (2, model.context_length))).sum().backward()
    opt.step()


def _load_other(model):
    model.load_state_dict(CLIP(model.config).state_dict())


def _no_grad_edit(model):
    with torch.no_grad():
        model.token_embedding.weight[5, 3] += 1.0


def _data_edit(model):
    model.visual.proj.data.mul_(1.5)  # bypasses the version counter


def _numpy_edit(model):
    model.ln_final.weight.detach().numpy()[:] = 0.5  # bypasses it too


def _replace_parameter(model):
    model.logit_scale = torch.nn.Parameter(model.logit_scale.detach().clone() + 1)


def _to_half(model):
    model.half()


EDITS = [
    _fused_adamw_step,
    _foreach_sgd_step,
    _load_other,
    _no_grad_edit,
    _data_edit,
    _numpy_edit,
    _replace_parameter,
    _to_half,
]


@pytest.mark.parametrize("edit", EDITS, ids=lambda f: f.__name__.strip("_"))
def test_key_changes_with_the_weights(edit, fingerprints):
    model = _tiny()
    before = feature_cache.cache_key(model, _Named())
    edit(model)
    after = feature_cache.cache_key(model, _Named())
    assert after != before
    assert feature_cache.model_identity(model) == model_fingerprint(model)
    assert len(fingerprints) == 2  # hashed once before and once after, not on the extra call


def test_restored_weights_give_the_old_key_back():
    model = _tiny()
    saved = copy.deepcopy(model.state_dict())
    before = feature_cache.cache_key(model, _Named())
    _foreach_sgd_step(model)
    assert feature_cache.cache_key(model, _Named()) != before
    model.load_state_dict(saved)
    assert feature_cache.cache_key(model, _Named()) == before


def test_inference_mode_model_is_hashed_every_time(fingerprints):
    with torch.inference_mode():
        model = _tiny()
    a, b = feature_cache.model_identity(model), feature_cache.model_identity(model)
    assert a == b == model_fingerprint(model) and len(fingerprints) == 2


def test_forget_model_identity(fingerprints):
    model = _tiny()
    feature_cache.model_identity(model)
    feature_cache.forget_model_identity(model)
    feature_cache.model_identity(model)
    assert len(fingerprints) == 2


def test_cache_is_not_served_stale_during_training(tmp_path):
    """The trainer's pattern: evaluate, train a step in place, evaluate again with the same cache."""
    model = _tiny()
    size = model.config.vision.image_size
    images = [Image.new("RGB", (size, size), (40 * i, 255 - 30 * i, 7 * i)) for i in range(6)]

    def transform(img):
        return torch.tensor(list(img.getdata()), dtype=torch.float32).T.reshape(3, size, size) / 255

    dataset = InMemoryDataset(images, [0, 1, 0, 1, 0, 1], ["a", "b"], transform)
    run = dict(batch_size=4, workers=0, progress=False, cache_path=tmp_path / "cache")
    first = feature_cache.extract_image_features(model, dataset, **run).features
    assert torch.equal(feature_cache.extract_image_features(model, dataset, **run).features, first)
    _fused_adamw_step(model, images=True)
    second = feature_cache.extract_image_features(model, dataset, **run).features
    plain = feature_cache.extract_image_features(model, dataset, **{**run, "cache_path": None}).features
    assert torch.equal(second, plain) and not torch.equal(second, first)


def test_warnings_clean_on_reload(stored, micro):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # mmap-ed reads must not warn (e.g. about non-writable tensors)
        model, _ = load_checkpoint(stored["openai state dict"][0])
    _same_weights(model, micro)
