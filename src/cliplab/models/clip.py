"""CLIP: an image tower and a causal text tower projected into one embedding space.

State-dict keys are exactly those of OpenAI's released models (``visual.*``, ``transformer.*``,
``token_embedding``, ``positional_embedding``, ``ln_final``, ``text_projection``, ``logit_scale``);
other formats are mapped onto them at load time (see ``cliplab.checkpoints``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import CLIPConfig, mlp_width
from .modified_resnet import ModifiedResNet
from .transformer import LayerNorm, Packing, Transformer
from .vision_transformer import VisionTransformer


@dataclass
class TextPrefixes:
    """Cached keys and values of token prefixes shared by many texts (``CLIP.encode_text_prefixes``)."""

    keys_values: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, (heads, G, P_max, head_dim) each
    lengths: torch.Tensor  # (G,) tokens in each prefix


class CLIP(nn.Module):
    def __init__(self, config: CLIPConfig):
        super().__init__()
        self.config = config
        v, t = config.vision, config.text
        if v.kind == "resnet":
            self.visual = ModifiedResNet(v, config.embed_dim)
        else:
            self.visual = VisionTransformer(v, config.embed_dim, config.quick_gelu)
        self.context_length = t.context_length
        self.vocab_size = t.vocab_size
        self.transformer = Transformer(
            t.width, t.layers, t.heads, config.quick_gelu, mlp_width(t.width, t.mlp_ratio)
        )
        self.token_embedding = nn.Embedding(t.vocab_size, t.width)
        self.positional_embedding = nn.Parameter(torch.empty(t.context_length, t.width))
        self.ln_final = LayerNorm(t.width)
        self.text_projection = nn.Parameter(torch.empty(t.width, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(float(config.init_logit_scale)))
        self.init_weights()

    def init_weights(self) -> None:
        """Random initialisation as in OpenAI's code (their values for training from scratch)."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.visual.init_weights()
        self.transformer.init_weights()
        nn.init.normal_(self.text_projection, std=self.transformer.width**-0.5)

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    @property
    def image_size(self) -> int:
        return self.config.vision.image_size

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute transformer blocks in the backward pass instead of storing their activations."""
        self.transformer.grad_checkpointing = enable
        if isinstance(self.visual, VisionTransformer):
            self.visual.transformer.grad_checkpointing = enable

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """(N, 3, H, W) preprocessed images -> (N, embed_dim) features."""
        x = self.visual(images.to(self.dtype))
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text(
        self, text: torch.Tensor, normalize: bool = False, full_length: bool = False
    ) -> torch.Tensor:
        """(N, L) token ids -> (N, embed_dim) features, read at each row's end-of-text token.

        The end-of-text token has the highest id, so ``argmax`` finds it (as in OpenAI's code). With the
        causal mask no position attends to later ones, so nothing after a row's end-of-text token can
        change its result. By default each row is therefore run only up to its own end-of-text token:
        the real tokens of all rows are packed together for the linear layers (no padding; in a
        batch of captions of mixed lengths that is about half the work), attention scatters them back
        into rows, and the last layer computes only the end-of-text tokens. ``full_length=True`` runs
        all L positions of every row through every layer, the plain computation (for checking, and
        for graph export, where shapes must not depend on the data); the two agree to float rounding.
        """
        eot = text.argmax(dim=-1)
        length = text.shape[-1] if full_length else int(eot.max()) + 1
        if length > self.context_length:
            raise ValueError(
                f"text has {length} positions up to its end-of-text token but this model's context_length "
                f"is {self.context_length}; tokenize with context_length={self.context_length}, truncate=True"
            )
        text = text[:, :length]
        if full_length:
            x = self.token_embedding(text).to(self.dtype) + self.positional_embedding.to(self.dtype)[:length]
            x = self.transformer(x, causal=True)
            x = x[torch.arange(x.shape[0], device=x.device), eot]  # (N, D): pool before the final LN
        else:
            packing = Packing(eot + 1, length)
            x = self.token_embedding(text).to(self.dtype) + self.positional_embedding.to(self.dtype)[:length]
            # Gather the real tokens only after adding the positions: indexing the (L, D) positional
            # table by position would accumulate its gradient with index_put_, whose order on a
            # multi-threaded CPU varies between runs (training would not be reproducible).
            x = x.flatten(0, 1).index_select(0, packing.slots)  # (R, D)
            x = self.transformer.forward_after(x, None, None, packing)  # (N, D) at each end-of-text token
        x = self.ln_final(x) @ self.text_projection
        return F.normalize(x, dim=-1) if normalize else x

    def encode_text_prefixes(self, prefixes: torch.Tensor, lengths: torch.Tensor) -> TextPrefixes:
        """Run G token prefixes (G, P_max), zero-padded at the end to ``lengths``, once; cache them.

        A prefix is the start of texts, with the start-of-text token and without their end-of-text
        token (length 0: nothing shared); :meth:`encode_text_after_prefix` then encodes only the rest
        of each text.
        """
        lengths = lengths.to(prefixes.device)
        if prefixes.ndim != 2 or lengths.shape != prefixes.shape[:1]:
            raise ValueError(f"prefixes must be (G, P) with G lengths, got {tuple(prefixes.shape)}")
        if int(lengths.min()) < 0 or int(lengths.max()) > min(prefixes.shape[1], self.context_length - 1):
            raise ValueError("each prefix needs 0 to context_length - 1 tokens, within its row")
        # Prefixes of one length run together, unpadded; the cache is padded (with zeros) to P_max.
        heads = self.transformer.resblocks[0].attn.heads
        shape = (heads, prefixes.shape[0], prefixes.shape[1], self.transformer.width // heads)
        cache = [
            (prefixes.new_zeros(shape, dtype=self.dtype), prefixes.new_zeros(shape, dtype=self.dtype))
            for _ in self.transformer.resblocks
        ]
        for n in lengths.unique().tolist():
            if n == 0:
                continue
            rows = (lengths == n).nonzero().squeeze(1)
            x = self.token_embedding(prefixes[rows, :n]).to(self.dtype) + self.positional_embedding[:n].to(
                self.dtype
            )
            for (keys, values), (k, v) in zip(cache, self.transformer.prefix_keys_values(x), strict=True):
                keys[:, rows, :n] = k
                values[:, rows, :n] = v
        return TextPrefixes(cache, lengths)

    def encode_text_after_prefix(
        self,
        suffixes: torch.Tensor,
        suffix_lengths: torch.Tensor,
        prefix_index: torch.Tensor,
        prefixes: TextPrefixes,
        normalize: bool = False,
    ) -> torch.Tensor:
        """Features of texts given as a cached prefix and the tokens after it; equal to ``encode_text``.

        Text ``i`` is prefix ``prefix_index[i]`` of ``prefixes`` followed by the first
        ``suffix_lengths[i]`` ids of ``suffixes[i]`` (N, S), the last of them its end-of-text token.
        Its suffix runs at positions after the prefix and attends to the prefix's cached keys and
        values, which is what the causal forward pass of the whole text computes.
        """
        device = suffixes.device
        prefix_index, suffix_lengths = prefix_index.to(device), suffix_lengths.to(device)
        n, length = suffixes.shape
        starts = prefixes.lengths.to(device)[prefix_index]  # (N,) tokens before each suffix
        if int((starts + suffix_lengths).max()) > self.context_length or int(suffix_lengths.min()) < 1:
            raise ValueError(
                f"each text needs 1 to {self.context_length} tokens after its prefix, within its row"
            )
        p = int(starts.max())
        # Only real tokens run through the linear layers; attention pads them back into rows.
        packing = Packing(suffix_lengths, length)
        ids = suffixes.flatten()[packing.slots]
        positions = (starts[:, None] + torch.arange(length, device=device)).flatten()[packing.slots]
        x = self.token_embedding(ids).to(self.dtype) + self.positional_embedding[positions].to(self.dtype)
        if bool((prefix_index == prefix_index[0]).all()):
            # One prefix for the whole batch (a template's prompts): its keys and values are used as
            # they are cached, shared by every row, never copied per row.
            g = int(prefix_index[0])
            past = [(k[:, g, :p], v[:, g, :p]) for k, v in prefixes.keys_values]
            past_mask = None
        else:
            # Mixed prefixes: gathered per row; a row sees its own prefix, not the padding of shorter ones.
            past = [(k[:, prefix_index, :p], v[:, prefix_index, :p]) for k, v in prefixes.keys_values]
            past_mask = torch.arange(p, device=device) < starts[:, None]
        x = self.transformer.forward_after(x, past, past_mask, packing)  # (N, D) at end-of-text
        x = self.ln_final(x) @ self.text_projection
        return F.normalize(x, dim=-1) if normalize else x

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(logits_per_image, logits_per_text)``: scaled cosine similarities, (N_img, N_txt) and its transpose."""
        image_features = self.encode_image(images, normalize=True)
        text_features = self.encode_text(text, normalize=True)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()
        return logits_per_image, logits_per_image.t()


def build_model(config: CLIPConfig) -> CLIP:
    return CLIP(config)
