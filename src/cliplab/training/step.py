"""One optimisation step, with gradient accumulation that keeps the contrastive batch whole.

Splitting a contrastive batch into K micro-batches and summing their losses would change the task
(each image would only compete with 1/K of the captions). Instead:

1. encode all K micro-batches without gradients and keep the features;
2. for each micro-batch j, encode it again with gradients, put its live features in place of the
   cached ones, compute the loss over the whole batch and backpropagate.

Step 2's backward gives dL/df_j * df_j/dtheta, so the K backward passes sum to the gradient of the
full-batch loss. ``logit_scale`` enters every loss, so it keeps its graph in one micro-step only
(the last: under DistributedDataParallel that is the one backward that synchronises, and every
parameter must receive its gradient there).

BatchNorm (ResNet towers): the caching pass runs in training mode, so its features use batch
statistics like the recomputation, but its updates of the running statistics are undone, so each
micro-batch updates them once. Micro-batch statistics still differ from the whole batch's, so with
BatchNorm the equivalence to one large batch is approximate; transformers are exact.

Several processes: ``forward`` is the DistributedDataParallel-wrapped :class:`ContrastiveForward`, so
DDP's hooks fire; micro-steps other than the last run under ``no_sync()``; and ``agree`` makes the
skip decision for a non-finite loss the same on every rank before any backward (which holds
collectives) starts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
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


class ContrastiveForward(nn.Module):
    """The training forward: ``(images, texts) -> (image features, text features, logit_scale)``.

    Features are L2-normalised. This is the module DistributedDataParallel wraps, so the whole
    forward (both towers) goes through DDP's ``forward`` and its gradient hooks.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, texts: torch.Tensor):
        m = self.model
        return m.encode_image(images, normalize=True), m.encode_text(texts, normalize=True), m.logit_scale


@contextlib.contextmanager
def batchnorm_stats_frozen(module: nn.Module):
    """Run ``module`` in training mode but leave its BatchNorm running statistics as they were."""
    saved = [
        (bn, {k: b.clone() for k, b in bn.named_buffers(recurse=False)})
        for bn in module.modules()
        if isinstance(bn, nn.modules.batchnorm._BatchNorm)
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for bn, buffers in saved:
                for k, b in buffers.items():
                    getattr(bn, k).copy_(b)


def _agree_alone(ok: bool) -> bool:
    return ok


def compute_gradients(
    forward: nn.Module,
    loss_fn: ClipLoss,
    images: torch.Tensor,
    texts: torch.Tensor,
    accum_steps: int,
    precision: str = "fp32",
    scaler: torch.amp.GradScaler | None = None,
    agree: Callable[[bool], bool] = _agree_alone,
) -> StepResult:
    """Forward + backward for one batch; gradients are left in ``.grad`` (zeroed first).

    ``forward`` is a :class:`ContrastiveForward`, possibly wrapped in DistributedDataParallel.
    A non-finite loss (on any rank, as ``agree`` decides) returns ``finite=False`` before any
    backward pass, so no gradient is written.
    """
    device = images.device
    forward.zero_grad(set_to_none=True)
    backward = (lambda t: scaler.scale(t).backward()) if scaler is not None else (lambda t: t.backward())
    no_sync = getattr(forward, "no_sync", contextlib.nullcontext)
    if accum_steps == 1:
        with autocast_context(device, precision):
            image_f, text_f, scale = forward(images, texts)
            loss = loss_fn(image_f, text_f, scale)
        if not agree(bool(torch.isfinite(loss))):
            return StepResult(float(loss.detach()), False)
        backward(loss)
        return StepResult(float(loss.detach()), True)

    image_chunks, text_chunks = images.chunk(accum_steps), texts.chunk(accum_steps)
    with torch.no_grad(), autocast_context(device, precision), batchnorm_stats_frozen(forward):
        cached = [forward(i, t)[:2] for i, t in zip(image_chunks, text_chunks, strict=True)]
        full_loss = loss_fn(
            torch.cat([c[0] for c in cached]), torch.cat([c[1] for c in cached]), _logit_scale(forward)
        )
    if not agree(bool(torch.isfinite(full_loss))):
        return StepResult(float(full_loss), False)
    last = accum_steps - 1
    for j, (i, t) in enumerate(zip(image_chunks, text_chunks, strict=True)):
        with no_sync() if j < last else contextlib.nullcontext():
            with autocast_context(device, precision):
                image_f, text_f, scale = forward(i, t)
                all_image = torch.cat(
                    [c[0] for c in cached[:j]] + [image_f] + [c[0] for c in cached[j + 1 :]]
                )
                all_text = torch.cat([c[1] for c in cached[:j]] + [text_f] + [c[1] for c in cached[j + 1 :]])
                loss = loss_fn(all_image, all_text, scale if j == last else scale.detach())
            backward(loss)
    return StepResult(float(full_loss), True)


def _logit_scale(forward: nn.Module) -> torch.Tensor:
    inner = getattr(forward, "module", forward)  # DDP keeps the wrapped module as .module
    return inner.model.logit_scale
