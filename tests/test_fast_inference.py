"""The fast inference paths of the image towers against the plain ones.

* ``prepare_image_encoder`` (bfloat16, BatchNorm folded, channels-last ResNets) against the float32
  model: cosine >= 0.999 on varied inputs; its float32 precision within float rounding.
* The in-place inference forward of the towers (taken when autograd is off) against the autograd
  forward: bit-identical.
* The error paths: unknown precision, float16 on the CPU, bfloat16 on a GPU without it, a model in
  training mode, something that is not a CLIP model, malformed images.
"""

from __future__ import annotations

import copy
import dataclasses
import functools

import pytest
import torch
import torch.nn.functional as F

from cliplab.errors import UsageError
from cliplab.inference import encode_images, prepare_image_encoder
from cliplab.inference.fast import cpu_has_native_bfloat16, fold_batchnorms, resolve_precision
from cliplab.models import CLIP
from cliplab.models.config import get_config


def _randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial eval-mode BatchNorm (cliplab's init zeroes each block's last BN weight)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(0.5 + 0.5 * torch.rand(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))


def _model(kind: str, quick_gelu: bool = True) -> CLIP:
    """A fresh copy of one cached model per case (building the text tower's embedding is the slow part)."""
    return copy.deepcopy(_cached_model(kind, quick_gelu))


@functools.cache
def _cached_model(kind: str, quick_gelu: bool) -> CLIP:
    torch.manual_seed(0)
    if kind == "vit":
        config = dataclasses.replace(get_config("tiny"), quick_gelu=quick_gelu)
    else:  # RN50's stage depths at a small width and size, so errors accumulate over 16 blocks
        base = get_config("tiny-rn")
        config = dataclasses.replace(base, vision=dataclasses.replace(base.vision, layers=(3, 4, 6, 3)))
    model = CLIP(config).eval()
    if kind == "resnet":
        _randomize_batchnorm(model)
    return model


def _images(n: int, size: int, seed: int = 1) -> torch.Tensor:
    """Noise, smooth random fields and near-constant frames, in the normalised pixel range."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 3, size, size, generator=g)
    smooth = 1.5 * F.interpolate(torch.randn(n, 3, 5, 5, generator=g), size=(size, size), mode="bicubic")
    flat = torch.rand(n, 3, 1, 1, generator=g) * 3 - 1.5 + 0.05 * noise
    return torch.cat([noise, smooth, flat])


CASES = [("vit", True), ("vit", False), ("resnet", True)]


@pytest.mark.parametrize("kind,quick_gelu", CASES)
def test_bfloat16_encoder_close_to_float32(kind, quick_gelu):
    model = _model(kind, quick_gelu)
    x = _images(4, model.image_size)
    with torch.inference_mode():
        want = model.encode_image(x)
    with pytest.warns(RuntimeWarning) if not cpu_has_native_bfloat16() else _nothing():
        encoder = prepare_image_encoder(model, "bfloat16")
    got = encoder.encode_image(x)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert F.cosine_similarity(got, want, dim=-1).min() >= 0.999
    normalized = encoder.encode_image(x, normalize=True)
    torch.testing.assert_close(normalized, F.normalize(got, dim=-1))


@pytest.mark.parametrize("kind,quick_gelu", CASES)
def test_float32_encoder_matches_plain_model(kind, quick_gelu):
    """precision='float32' keeps only the exact rewrites (folded BatchNorm, channels-last): float rounding."""
    model = _model(kind, quick_gelu)
    x = _images(3, model.image_size)
    with torch.inference_mode():
        want = model.encode_image(x)
    got = prepare_image_encoder(model, "float32").encode_image(x)
    scale = want.abs().max()
    assert (got - want).abs().max() <= 1e-5 * max(1.0, float(scale))


def test_prepare_leaves_the_model_alone():
    model = _model("resnet")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    encoder = prepare_image_encoder(model, "float32")
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert isinstance(model.visual.bn1, torch.nn.BatchNorm2d)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in encoder.modules())
    assert not any(p.requires_grad for p in encoder.parameters())


def test_fold_batchnorms_is_the_same_affine_map():
    model = _model("resnet").visual
    x = _images(2, 64)
    with torch.inference_mode():
        want = model(x)
    folded = copy.deepcopy(model)
    fold_batchnorms(folded)
    with torch.inference_mode():
        got = folded(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind,quick_gelu", CASES)
def test_inplace_inference_forward_is_bit_identical(kind, quick_gelu):
    """With autograd off the towers update activations in place; the numbers must not move at all."""
    model = _model(kind, quick_gelu)
    x = _images(2, model.image_size)
    original = x.clone()
    with torch.enable_grad():
        want = model.encode_image(x)
    assert want.requires_grad  # the plain autograd path ran
    with torch.inference_mode():
        got_inference = model.encode_image(x)
    with torch.no_grad():
        got_no_grad = model.encode_image(x)
    assert torch.equal(got_inference, want.detach())
    assert torch.equal(got_no_grad, want.detach())
    assert torch.equal(x, original)  # the caller's images are never written to


def test_encode_images_precision_option():
    model = _model("vit")
    images = _images(3, model.image_size)
    collection = _Tensors(images)
    plain = encode_images(model, collection, workers=0, progress=False, batch_size=4)
    fast = encode_images(model, collection, workers=0, progress=False, batch_size=4, precision="float32")
    torch.testing.assert_close(fast.features, plain.features, rtol=1e-5, atol=1e-5)
    assert torch.equal(fast.indices, plain.indices)
    auto = encode_images(model, collection, workers=0, progress=False, batch_size=4, precision="auto")
    assert (auto.features * plain.features).sum(-1).min() >= 0.999  # unit rows: dot = cosine


def test_auto_precision_on_the_cpu():
    want = torch.bfloat16 if cpu_has_native_bfloat16() else torch.float32
    assert resolve_precision("auto", torch.device("cpu")) == want
    assert prepare_image_encoder(_model("vit"), "auto").dtype == want


def test_unknown_precision_is_refused():
    with pytest.raises(UsageError, match="precision must be one of"):
        prepare_image_encoder(_model("vit"), "int8")


def test_float16_on_the_cpu_is_refused():
    with pytest.raises(UsageError, match="float16.*slower than float32"):
        prepare_image_encoder(_model("vit"), "float16")


def test_bfloat16_on_a_gpu_without_it_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Old GPU")
    with pytest.raises(UsageError, match="Old GPU has no bfloat16.*float16"):
        resolve_precision("bfloat16", torch.device("cuda"))
    assert resolve_precision("auto", torch.device("cuda")) == torch.float16


def test_training_mode_resnet_is_refused():
    model = _model("resnet").train()
    with pytest.raises(UsageError, match="model.eval"):
        prepare_image_encoder(model, "float32")


def test_not_a_clip_model_is_refused():
    with pytest.raises(UsageError, match="cliplab CLIP model"):
        prepare_image_encoder(torch.nn.Linear(2, 2), "float32")


def test_bad_images_are_refused():
    encoder = prepare_image_encoder(_model("vit").visual, "float32")
    with pytest.raises(UsageError, match=r"float tensor \(N, 3, H, W\)"):
        encoder.encode_image(torch.zeros(3, 64, 64))
    with pytest.raises(UsageError, match="float tensor"):
        encoder.encode_image(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


class _Tensors:
    """A minimal image collection of ready tensors (the interface ``image_batches`` reads)."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> torch.Tensor:
        return self.images[index]


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
