"""The contrastive loss: symmetric cross-entropy over scaled cosine similarities.

For a batch of N pairs the logits are ``scale * I @ T.T``; row i's correct class is column i, and
the loss averages the image->text and text->image cross-entropies (the paper's Figure 3).

Distributed settings arrive as arguments (never read from the environment). With ``world_size > 1``
every rank's features are all-gathered *with gradients* and each rank scores its own rows against
every column of the global batch. Why that is exact: rank r's loss ``L_r`` is the mean over its n
rows, so the global loss is ``L = mean_r L_r``. The differentiable all-gather sends back to rank r
the gradient of ``sum_r' L_r'`` with respect to r's features (its backward sums over ranks), and
DistributedDataParallel averages parameter gradients over ranks, which gives ``dL/dtheta`` exactly;
``logit_scale`` enters every ``L_r`` directly and its averaged gradient is ``dL/dscale`` too.

A gather without gradients (open_clip's ``gather_with_grad=False``) is not offered: combined with
the local loss it loses the column terms other ranks compute for this rank's features, and made
exact it costs the full N x N logits on every rank. One exact mode is simpler.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

MAX_LOGIT_SCALE = 100.0


def clamp_logit_scale_(logit_scale: nn.Parameter, max_scale: float = MAX_LOGIT_SCALE) -> None:
    """Keep exp(logit_scale) <= ``max_scale`` (the paper clips the temperature to avoid instability)."""
    with torch.no_grad():
        logit_scale.clamp_(0, float(torch.log(torch.tensor(max_scale))))


def gather_features(features: torch.Tensor, world_size: int) -> torch.Tensor:
    """Concatenate ``features`` from all ranks in rank order; gradients flow back to every rank."""
    if world_size == 1:
        return features
    import torch.distributed.nn  # noqa: F401  (registers the differentiable all_gather)

    # torch 2.13 marks this autograd all_gather deprecated in favour of a private functional API
    # whose backward needs reduce-scatter, which gloo lacks; this one works on every backend and
    # every torch >= 2.1 (its backward sums the gradients over ranks with all-to-all).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        parts = torch.distributed.nn.all_gather(features)
    return torch.cat(parts, dim=0)


class ClipLoss(nn.Module):
    """``loss(image_features, text_features, logit_scale)`` on L2-normalised features.

    ``logit_scale`` is the log of the inverse temperature (the model's parameter, not its exp).
    """

    def __init__(self, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.rank, self.world_size = rank, world_size

    def forward(
        self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
    ) -> torch.Tensor:
        all_image = gather_features(image_features, self.world_size)
        all_text = gather_features(text_features, self.world_size)
        scale = logit_scale.exp()
        n = image_features.shape[0]
        # This rank's rows against every rank's columns; labels are this rank's offset in the global batch.
        logits_per_image = scale * image_features @ all_text.t()
        logits_per_text = scale * text_features @ all_image.t()
        labels = torch.arange(n, device=image_features.device) + n * self.rank
        loss_i = F.cross_entropy(_at_least_fp32(logits_per_image), labels)
        loss_t = F.cross_entropy(_at_least_fp32(logits_per_text), labels)
        return (loss_i + loss_t) / 2


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    # fp16/bf16 logits (autocast) are upcast for a stable softmax; float64 stays float64.
    return x.to(torch.promote_types(x.dtype, torch.float32))
