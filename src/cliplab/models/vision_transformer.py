"""OpenAI's ViT image tower: patchify, prepend a class token, pre-LN transformer, project the class token."""

from __future__ import annotations

import torch
from torch import nn

from .config import VisionConfig, mlp_width
from .transformer import LayerNorm, QuickGELU, ResidualAttentionBlock, Transformer


class VisionTransformer(nn.Module):
    def __init__(self, cfg: VisionConfig, output_dim: int, quick_gelu: bool = True):
        super().__init__()
        self.image_size = cfg.image_size
        self.output_dim = output_dim
        width = cfg.width
        self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.grid_size**2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(
            width, cfg.layers, cfg.heads, quick_gelu, mlp_width(width, cfg.mlp_ratio)
        )
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    @property
    def input_resolution(self) -> int:
        """The image side the tower expects (the attribute name of OpenAI's ``clip``)."""
        return self.image_size

    def init_weights(self) -> None:
        self.transformer.init_weights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)  # (N, D, grid, grid)
        x = x.flatten(2).transpose(1, 2)  # (N, grid*grid, D)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        if torch.is_grad_enabled():
            x = self.transformer(x)
        else:
            for block in self.transformer.resblocks:
                x = _block_inplace(block, x)
        return self.ln_post(x[:, 0]) @ self.proj


def _block_inplace(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """``block(x)`` without autograd, updating ``x`` and the MLP activation in place.

    The same operations in the same order as ``ResidualAttentionBlock.forward`` (so bit-identical
    results), minus the four temporaries of the (N, L, 4D) MLP activation and the residual sums:
    fresh large CPU buffers are page-faulted in on every call, which cost as much as the
    element-wise arithmetic itself (benchmarks/attempts/image.md).
    """
    x += block.attn(block.ln_1(x))
    h = block.mlp.c_fc(block.ln_2(x))
    if isinstance(block.mlp.gelu, QuickGELU):
        h.mul_(torch.sigmoid_(h * 1.702))  # QuickGELU: x * sigmoid(1.702 * x)
    else:
        h = block.mlp.gelu(h)
    x += block.mlp.c_proj(h)
    return x
