"""The contrastive loss: symmetric cross-entropy over scaled cosine similarities.

For a batch of N pairs the logits are ``scale * I @ T.T``; row i's correct class is column i, and
the loss averages the image->text and text->image cross-entropies (the paper's Figure 3).

Distributed settings arrive as arguments (never read from the environment): with ``world_size > 1``
the features of every rank are gathered so each rank computes the loss over the global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

MAX_LOGIT_SCALE = 100.0


def clamp_logit_scale_(logit_scale: nn.Parameter, max_scale: float = MAX_LOGIT_SCALE) -> None:
    """Keep exp(logit_scale) <= ``max_scale`` (the paper clips the temperature to avoid instability)."""
    with torch.no_grad():
        logit_scale.clamp_(0, float(torch.log(torch.tensor(max_scale))))


def gather_features(
    features: torch.Tensor, rank: int, world_size: int, with_grad: bool = True
) -> torch.Tensor:
    """Concatenate ``features`` from all ranks in rank order.

    With ``with_grad`` the gradient flows back to every rank's features (torch.distributed.nn);
    otherwise only the local slice keeps its graph, which gives the same gradients for the local
    parameters once every rank's loss is summed (the usual "local gradient" trick).
    """
    if world_size == 1:
        return features
    if with_grad:
        import torch.distributed.nn  # noqa: F401  (registers the differentiable all_gather)

        return torch.cat(torch.distributed.nn.all_gather(features), dim=0)
    parts = [torch.empty_like(features) for _ in range(world_size)]
    dist.all_gather(parts, features.detach())
    parts[rank] = features
    return torch.cat(parts, dim=0)


class ClipLoss(nn.Module):
    """``loss(image_features, text_features, logit_scale)`` on L2-normalised features.

    ``logit_scale`` is the log of the inverse temperature (the model's parameter, not its exp).
    """

    def __init__(self, rank: int = 0, world_size: int = 1, gather_with_grad: bool = True):
        super().__init__()
        self.rank, self.world_size, self.gather_with_grad = rank, world_size, gather_with_grad

    def forward(
        self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
    ) -> torch.Tensor:
        all_image = gather_features(image_features, self.rank, self.world_size, self.gather_with_grad)
        all_text = gather_features(text_features, self.rank, self.world_size, self.gather_with_grad)
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
