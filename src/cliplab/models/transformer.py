"""The pre-norm residual transformer shared by the ViT image tower and the text tower.

Parameter names follow OpenAI's released checkpoints (``attn.in_proj_weight``, ``mlp.c_fc`` ...), so
their state dicts load without renaming. Unlike OpenAI's code, tensors stay batch-first (N, L, D)
throughout and attention goes through ``F.scaled_dot_product_attention``, which picks a fused kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back, so fp16/bf16 weights stay numerically safe."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        return F.layer_norm(
            x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps
        ).to(dtype)


class QuickGELU(nn.Module):
    """OpenAI's sigmoid approximation of GELU; their released weights were trained with it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with a packed q/k/v projection (OpenAI's ``nn.MultiheadAttention`` keys)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        n, length, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        # (N, L, 3D) -> 3 x (N, heads, L, head_dim)
        q, k, v = qkv.view(n, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(n, length, width))

    def attend_after(
        self,
        x: torch.Tensor,
        past_k: torch.Tensor | None,
        past_v: torch.Tensor | None,
        past_mask: torch.Tensor | None = None,
        packing: Packing | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Causal attention of ``x`` to cached earlier keys/values and to itself.

        Without a past (``past_k`` None) or packing, ``x`` is (N, L, D) and this is plain causal
        attention. With a past or a packing, ``x`` is (R, D): the real tokens of N rows of different
        lengths, packed as ``packing`` says (the linear layers run on real tokens only; attention scatters them into
        (N, L) rows, padded at the end, which the causal mask keeps from every real query).
        With a packing and no past, the rows start at position 0 and attention is the fused causal
        kernel on the scattered rows (``CLIP.encode_text``). ``past_k``/``past_v`` hold the keys and
        values of positions before each row (a cached prompt prefix): (heads, P, head_dim) when all N rows follow the same prefix (it is never copied per
        row: the rows' queries meet it in one (heads, N * L, head_dim) @ (heads, head_dim, P)
        product), or (heads, N, P, head_dim) per row, with ``past_mask`` (N, P) saying which of them
        each row sees (prefixes of different lengths, padded). With ``last_only`` only each row's last
        token is a query (the others still give keys and values) and the output is (N, D), else
        (R, D). Returns ``(out, k, v)``, ``k``/``v`` being this call's own keys and values,
        (heads, N, L, head_dim).
        """
        width = x.shape[-1]
        heads = self.heads
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        if past_k is None and packing is None:
            n, length, _ = x.shape
            q, k, v = qkv.view(n, length, 3, heads, width // heads).permute(2, 3, 0, 1, 4).unbind(0)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.out_proj(out.permute(1, 2, 0, 3).reshape(n, length, width)), k, v
        if packing is None:
            raise ValueError("attention after cached keys/values needs the packing of x")
        n, length = packing.rows, packing.length
        qkv = qkv.new_zeros(n * length, 3 * width).index_copy(0, packing.slots, qkv)
        # (N * L, 3D) -> 3 x (heads, N, L, head_dim): heads first, so a shared prefix folds N into rows
        q, k, v = qkv.view(n, length, 3, heads, width // heads).permute(2, 3, 0, 1, 4).unbind(0)
        if past_k is None:  # packed rows with nothing before them: fused causal attention per row
            if last_only:
                q = q[:, packing.row_index, packing.lengths - 1].unsqueeze(2)  # (heads, N, 1, head_dim)
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=~packing.after_last)
                return self.out_proj(out.squeeze(2).transpose(0, 1).reshape(n, width)), k, v
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            out = out.permute(1, 2, 0, 3).reshape(n * length, width).index_select(0, packing.slots)
            return self.out_proj(out), k, v
        scale = (width // heads) ** -0.5
        if last_only:
            q = q[:, packing.row_index, packing.lengths - 1].unsqueeze(2)  # (heads, N, 1, head_dim)
            hidden = packing.after_last  # (N, 1, L)
        else:
            hidden = packing.causal  # (L, L)
        q = (q * scale).contiguous()  # (heads, N, Lq, head_dim)
        lq = q.shape[2]
        if past_k.ndim == 3:  # one prefix for all rows
            scores_past = torch.bmm(q.view(heads, n * lq, -1), past_k.transpose(1, 2)).view(heads, n, lq, -1)
        else:
            scores_past = q @ past_k.transpose(-1, -2)
            if past_mask is not None:
                scores_past = scores_past.masked_fill(~past_mask[None, :, None, :], float("-inf"))
        scores_own = (q @ k.transpose(-1, -2)).masked_fill_(hidden, float("-inf"))
        p = scores_past.shape[-1]
        weights = torch.cat([scores_past, scores_own], dim=-1).softmax(dim=-1)
        out = weights[..., p:] @ v
        if past_k.ndim == 3:
            out += torch.bmm(weights[..., :p].reshape(heads, n * lq, p), past_v).view(heads, n, lq, -1)
        else:
            out += weights[..., :p] @ past_v
        out = out.permute(1, 2, 0, 3).reshape(n * lq, width)
        if not last_only:
            out = out.index_select(0, packing.slots)
        return self.out_proj(out), k, v


class Packing:
    """Where the R real tokens of N rows (lengths ``lengths``, padded to ``length``) sit.

    ``slots`` (R,): each real token's place in the padded N x L rows, row-major; ``last`` (N,): the
    packed index of each row's last token. Also the masks attention uses.
    """

    def __init__(self, lengths: torch.Tensor, length: int):
        device = lengths.device
        steps = torch.arange(length, device=device)
        self.rows, self.length, self.lengths = len(lengths), length, lengths
        self.slots = (steps < lengths[:, None]).flatten().nonzero().squeeze(1)
        self.last = lengths.cumsum(0) - 1
        self.row_index = torch.arange(len(lengths), device=device)
        self.causal = steps[None, :] > steps[:, None]  # (L, L): key after query
        self.after_last = (steps > (lengths - 1)[:, None]).unsqueeze(1)  # (N, 1, L)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, quick_gelu: bool = True, mlp_width: int | None = None):
        super().__init__()
        mlp_width = mlp_width or 4 * width  # OpenAI's 4x; some open_clip models use other ratios
        self.ln_1 = LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, mlp_width))
        self.mlp.add_module("gelu", QuickGELU() if quick_gelu else nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(mlp_width, width))

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal=causal)
        return x + self.mlp(self.ln_2(x))

    def forward_after(
        self,
        x: torch.Tensor,
        past_k: torch.Tensor | None,
        past_v: torch.Tensor | None,
        past_mask: torch.Tensor | None = None,
        packing: Packing | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The block on positions that follow cached ones; see ``SelfAttention.attend_after``."""
        out, k, v = self.attn.attend_after(self.ln_1(x), past_k, past_v, past_mask, packing, last_only)
        if last_only:
            x = x[packing.last]
        x = x + out
        return x + self.mlp(self.ln_2(x)), k, v


class Transformer(nn.Module):
    def __init__(
        self, width: int, layers: int, heads: int, quick_gelu: bool = True, mlp_width: int | None = None
    ):
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, quick_gelu, mlp_width) for _ in range(layers)]
        )
        self.grad_checkpointing = False

    def init_weights(self) -> None:
        """OpenAI's initialisation: output projections scaled down with depth."""
        proj_std = self.width**-0.5 * (2 * self.layers) ** -0.5
        attn_std = self.width**-0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:  # x: (N, L, D)
        for block in self.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, causal, use_reentrant=False)
            else:
                x = block(x, causal=causal)
        return x

    # Causal decoding in two steps, for many sequences that share their first tokens (zero-shot
    # prompts "a photo of a {}." share "<sot> a photo of a"): the shared part runs once, the rest of
    # each sequence attends to its cached keys and values. In exact arithmetic this is the plain
    # causal forward pass: with the causal mask a position never depends on later ones.

    def prefix_keys_values(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Keys and values of every layer, (heads, N, L, head_dim) each, for a causal forward of ``x``."""
        cache = []
        for block in self.resblocks:
            x, k, v = block.forward_after(x, None, None)
            cache.append((k, v))
        return cache

    def forward_after(
        self,
        x: torch.Tensor,
        past: list[tuple[torch.Tensor, torch.Tensor]] | None,
        past_mask: torch.Tensor | None,
        packing: Packing,
    ) -> torch.Tensor:
        """Hidden states (N, D) at the last token of each row of ``x``, which follows ``past``.

        ``x`` (R, D) holds the rows' real tokens packed as ``packing`` says. ``past`` holds each
        layer's cached keys and values, shared (heads, P, head_dim) or per row (heads, N, P,
        head_dim) with ``past_mask`` (N, P); see ``SelfAttention.attend_after``. With ``past=None``
        the rows start at position 0: a causal forward over rows of different lengths in which the
        linear layers never see padding (how ``CLIP.encode_text`` runs a batch). The last layer
        computes only the rows' last tokens: no later layer needs the others.
        """
        last = len(self.resblocks) - 1
        past = past if past is not None else [(None, None)] * len(self.resblocks)
        for i, (block, (k, v)) in enumerate(zip(self.resblocks, past, strict=True)):
            if self.grad_checkpointing and torch.is_grad_enabled():
                x, _, _ = checkpoint(
                    block.forward_after, x, k, v, past_mask, packing, i == last, use_reentrant=False
                )
            else:
                x, _, _ = block.forward_after(x, k, v, past_mask, packing, last_only=i == last)
        return x
