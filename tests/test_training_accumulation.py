"""Gradient accumulation keeps the contrastive batch whole: K micro-batches give the loss, the
gradients and the optimizer step of one batch K times larger."""

from __future__ import annotations

import pytest
import torch

import cliplab
from cliplab.tokenizer import tokenize
from cliplab.training import load_config
from cliplab.training.loop import Trainer
from cliplab.training.loss import ClipLoss
from cliplab.training.step import ContrastiveForward, compute_gradients

ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(16, 3, 32, 32, generator=g)
    words = ["red", "blue", "green", "circle", "square", "two", "small", "large"]
    captions = [f"a {words[i % 8]} {words[(3 * i + 1) % 8]} number {i}" for i in range(16)]
    return images, tokenize(captions, context_length=32)


def micro_model() -> cliplab.CLIP:
    torch.manual_seed(0)
    model = cliplab.create_model("micro").train()
    with torch.no_grad():
        model.logit_scale.fill_(2.0)  # a moderate temperature, so no gradient is vanishingly small
    return model


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def full_batch(batch):
    model = micro_model()
    result = compute_gradients(ContrastiveForward(model), ClipLoss(), *batch, accum_steps=1)
    return result, gradients(model)


@pytest.mark.parametrize("k", [2, 4])
def test_accumulated_loss_and_gradients_equal_full_batch(batch, full_batch, k):
    reference, ref_grads = full_batch
    model = micro_model()
    result = compute_gradients(ContrastiveForward(model), ClipLoss(), *batch, accum_steps=k)
    assert result.finite and reference.finite
    assert result.loss == pytest.approx(reference.loss, abs=ATOL)
    grads = gradients(model)
    # every parameter receives a gradient, in both paths
    assert set(grads) == set(ref_grads) == {n for n, _ in model.named_parameters()}
    assert ref_grads["logit_scale"].abs() > 1e-3
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], atol=ATOL, rtol=1e-4, msg=f"gradient of {name}, K={k}")


def test_accumulation_is_not_the_sum_of_micro_batch_losses(batch, full_batch):
    """The naive alternative (each micro-batch its own contrastive task) gives a different loss,
    so the equality above is not a coincidence of the test data."""
    reference, _ = full_batch
    model = micro_model()
    images, texts = batch
    with torch.no_grad():
        losses = [
            ClipLoss()(
                model.encode_image(i, normalize=True), model.encode_text(t, normalize=True), model.logit_scale
            )
            for i, t in zip(images.chunk(4), texts.chunk(4), strict=True)
        ]
    assert abs(float(torch.stack(losses).mean()) - reference.loss) > 1e-2


def test_nonfinite_loss_writes_no_gradient(batch):
    model = micro_model()

    def nan_loss(i, t, s):
        return ClipLoss()(i, t, s) * float("nan")

    for k in (1, 2):
        result = compute_gradients(ContrastiveForward(model), nan_loss, *batch, accum_steps=k)
        assert not result.finite
        assert all(p.grad is None for p in model.parameters())


def test_caching_pass_leaves_batchnorm_statistics_alone(batch):
    """With a ResNet tower, K micro-batches update the running statistics K times (once per
    recomputation with gradients), exactly as K plain training forwards would; the no-grad caching
    pass must not add a second update."""
    images, texts = batch
    torch.manual_seed(0)
    model = cliplab.create_model("tiny-rn").train()
    size = model.config.vision.image_size
    images = torch.nn.functional.interpolate(images, size=(size, size))
    texts = tokenize([f"caption {i}" for i in range(16)], context_length=model.context_length)
    expected = cliplab.create_model("tiny-rn").train()
    expected.load_state_dict(model.state_dict())
    with torch.no_grad():
        for chunk in images.chunk(2):
            expected.encode_image(chunk)
    compute_gradients(ContrastiveForward(model), ClipLoss(), images, texts, accum_steps=2)
    bn_buffers = [n for n, _ in model.named_buffers() if "running" in n or "num_batches" in n]
    assert bn_buffers
    for name in bn_buffers:
        torch.testing.assert_close(dict(model.named_buffers())[name], dict(expected.named_buffers())[name],
                                   atol=1e-6, rtol=1e-5, msg=name)  # fmt: skip


def _trainer(tmp_path, accum: int) -> Trainer:
    cfg = load_config(None, [
        "--model=micro", "--batch_size=16", f"--accum_steps={accum}", "--steps=4", "--warmup_steps=0",
        "--lr=1e-3", "--grad_clip=1.0", "--data.workers=0", "--data.synthetic_size=32", "--eval_every=0",
        "--tensorboard=false", "--checkpoint_every=0",
    ])  # fmt: skip
    return Trainer(cfg, tmp_path / f"accum{accum}", progress=False)


def test_one_optimizer_step_with_accumulation_equals_full_batch_step(tmp_path):
    plain, accumulated = _trainer(tmp_path, 1), _trainer(tmp_path, 4)
    # same initial weights (seeded construction), same first batch from the loader
    for name, t in plain.model.state_dict().items():
        assert torch.equal(t, accumulated.model.state_dict()[name]), name
    first = next(iter(plain._loader(0, 0)))
    assert len(first) == 16
    initial = {n: t.clone() for n, t in plain.model.state_dict().items()}
    rec_plain, rec_accum = plain.train_step(first), accumulated.train_step(first)
    assert rec_plain["loss"] == pytest.approx(rec_accum["loss"], abs=ATOL)
    assert rec_plain["grad_norm"] == pytest.approx(rec_accum["grad_norm"], rel=1e-4)
    after_plain, after_accum = plain.model.state_dict(), accumulated.model.state_dict()
    for name, t in after_plain.items():
        torch.testing.assert_close(
            after_accum[name], t, atol=ATOL, rtol=1e-4, msg=f"weight {name} after one step"
        )
    changed = sum(not torch.equal(initial[n], t) for n, t in after_plain.items())
    assert changed > len(after_plain) // 2, "the step really moved the weights"
