"""One optimisation step, with gradient accumulation that keeps the contrastive batch whole.

Splitting a contrastive batch into K micro-batches and summing their losses would change the task
(each image would only compete with 1/K of the captions). Instead:

1. encode all K micro-batches without gradients and keep the features;
2. for each micro-batch j, encode it again with gradients, put its live features in place of the
   cached ones, compute the loss over the whole batch and backpropagate.

Step 2's backward gives dL/df_j * df_j/dtheta, so the K backward passes sum to the gradient of the
full-batch loss. ``logit_scale`` enters every loss, so it keeps its graph only in micro-step 0
(otherwise its gradient would be counted K times). With BatchNorm (ResNet towers) the micro-batch
statistics differ from the full batch's, so there the equivalence is approximate.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from .loss import ClipLoss


@dataclass
class StepResult:
    loss: float
    finite: bool
    grad_norm: float | None = None


def autocast_context(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _features(
    model: nn.Module, images: torch.Tensor, texts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return model.encode_image(images, normalize=True), model.encode_text(texts, normalize=True)


def compute_gradients(
    model: nn.Module,
    loss_fn: ClipLoss,
    images: torch.Tensor,
    texts: torch.Tensor,
    accum_steps: int,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
) -> StepResult:
    """Forward + backward for one batch; gradients are left in ``.grad`` (zeroed first).

    A non-finite loss returns ``finite=False`` before any backward pass, so no gradient is written.
    """
    device = images.device
    model.zero_grad(set_to_none=True)
    backward = (lambda t: scaler.scale(t).backward()) if scaler is not None else (lambda t: t.backward())
    if accum_steps == 1:
        with autocast_context(device, precision):
            image_f, text_f = _features(model, images, texts)
            loss = loss_fn(image_f, text_f, model.logit_scale)
        if not torch.isfinite(loss):
            return StepResult(float(loss.detach()), False)
        backward(loss)
        return StepResult(float(loss.detach()), True)

    image_chunks, text_chunks = images.chunk(accum_steps), texts.chunk(accum_steps)
    with torch.no_grad(), autocast_context(device, precision):
        cached = [_features(model, i, t) for i, t in zip(image_chunks, text_chunks, strict=True)]
        full_loss = loss_fn(
            torch.cat([c[0] for c in cached]), torch.cat([c[1] for c in cached]), model.logit_scale
        )
    if not torch.isfinite(full_loss):
        return StepResult(float(full_loss), False)
    for j, (i, t) in enumerate(zip(image_chunks, text_chunks, strict=True)):
        with autocast_context(device, precision):
            image_f, text_f = _features(model, i, t)
            all_image = torch.cat([c[0] for c in cached[:j]] + [image_f] + [c[0] for c in cached[j + 1 :]])
            all_text = torch.cat([c[1] for c in cached[:j]] + [text_f] + [c[1] for c in cached[j + 1 :]])
            scale = model.logit_scale if j == 0 else model.logit_scale.detach()
            loss = loss_fn(all_image, all_text, scale)
        backward(loss)
    return StepResult(float(full_loss), True)
