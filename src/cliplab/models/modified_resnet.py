"""OpenAI's ModifiedResNet image tower.

Differences to torchvision's ResNet: a 3-convolution stem ending in an average pool (not max pool);
anti-aliased downsampling (stride-2 work is an ``AvgPool2d`` before a stride-1 convolution, in both
the main path and the shortcut); and an attention-pooling head (one query, the spatial mean, attends
over all positions) instead of global average pooling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import VisionConfig


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride > 1 or inplanes != out:
            # keys "downsample.0"/"downsample.1" as in OpenAI's checkpoints; the pool has no weights
            self.downsample = nn.Sequential()
            self.downsample.add_module("-1", nn.AvgPool2d(stride) if stride > 1 else nn.Identity())
            self.downsample.add_module("0", nn.Conv2d(inplanes, out, 1, bias=False))
            self.downsample.add_module("1", nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            # Inference: the same operations, with the ReLUs and the residual sum done in place
            # (bit-identical; saves a fresh activation buffer each, see benchmarks/attempts/image.md).
            out = F.relu_(self.bn1(self.conv1(x)))
            out = F.relu_(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(self.avgpool(out)))
            out += x if self.downsample is None else self.downsample(x)
            return F.relu_(out)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class AttentionPool2d(nn.Module):
    def __init__(self, grid: int, width: int, heads: int, output_dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(grid**2 + 1, width) / width**0.5)
        self.k_proj = nn.Linear(width, width)
        self.q_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.c_proj = nn.Linear(width, output_dim)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        x = x.flatten(2).transpose(1, 2)  # (N, HW, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.positional_embedding.to(x.dtype)
        hd = c // self.heads

        def heads(t: torch.Tensor) -> torch.Tensor:  # (N, L, C) -> (N, heads, L, hd)
            return t.view(n, -1, self.heads, hd).transpose(1, 2)

        # Only the mean token queries. In reduced precision it is projected as a 2-D (N, C) batch: a
        # strided (N, 1, C) slice sends bfloat16 matmuls down a batched path that copies the weight
        # once per image. float32 keeps the (N, 1, C) form, whose rounding trained runs (the demo's
        # table) were made with; the two differ by ~6e-8.
        if x.dtype == torch.float32:
            q = heads(self.q_proj(x[:, :1]))
        else:
            q = heads(self.q_proj(x[:, 0]).unsqueeze(1))
        out = F.scaled_dot_product_attention(q, heads(self.k_proj(x)), heads(self.v_proj(x)))
        return self.c_proj(out.transpose(1, 2).reshape(n, c))


class ModifiedResNet(nn.Module):
    def __init__(self, cfg: VisionConfig, output_dim: int):
        super().__init__()
        self.image_size = cfg.image_size
        self.output_dim = output_dim
        width = cfg.width
        stride = [2 if i == cfg.stem_stride_conv else 1 for i in (1, 2, 3)]
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=stride[0], padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, stride=stride[1], padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, stride=stride[2], padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        inplanes = width
        for i, blocks in enumerate(cfg.layers):
            planes = width * 2**i
            stage = [Bottleneck(inplanes, planes, stride=1 if i == 0 else 2)]
            inplanes = planes * Bottleneck.expansion
            stage += [Bottleneck(inplanes, planes) for _ in range(1, blocks)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.attnpool = AttentionPool2d(cfg.grid_size, width * 32, cfg.heads, output_dim)

    @property
    def input_resolution(self) -> int:
        """The image side the tower expects (the attribute name of OpenAI's ``clip``)."""
        return self.image_size

    def init_weights(self) -> None:
        std = self.attnpool.c_proj.in_features**-0.5
        for proj in (self.attnpool.q_proj, self.attnpool.k_proj, self.attnpool.v_proj, self.attnpool.c_proj):
            nn.init.normal_(proj.weight, std=std)
        # zero-init the last BN of each block so every residual branch starts as identity
        for name, param in self.named_parameters():
            if name.startswith("layer") and name.endswith("bn3.weight"):
                nn.init.zeros_(param)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.avgpool(F.relu(self.bn3(self.conv3(x))))
        # No gradient checkpointing here: recomputing a block in backward would update the
        # BatchNorm running statistics twice per step.
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)
