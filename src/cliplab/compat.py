"""open_clip's entry points on cliplab's model: ``create_model_and_transforms`` and ``get_tokenizer``.

Code written for open_clip runs with ``import cliplab as open_clip`` for the calls below; model
names are open_clip's (``"ViT-B-32"``, ``"ViT-H-14"``, ``"RN50-quickgelu"``...) or cliplab's, and
``pretrained`` is one of open_clip's tags (``cliplab.list_pretrained()``) or a local weights file.
Differences to open_clip, on purpose:

* weights open_clip marks as trained with QuickGELU get QuickGELU even under a name without
  ``-quickgelu`` (open_clip warns and runs them with exact GELU);
* architectures cliplab does not implement raise :class:`~cliplab.checkpoints.pretrained.UnsupportedModelError`
  naming the setting, instead of building a timm or Hugging Face tower.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UsageError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .models import CLIP

PRECISIONS = ("fp32", "fp16", "bf16")


def create_model_and_transforms(
    model_name: str,
    pretrained: str | os.PathLike | None = None,
    *,
    device: str = "cpu",
    precision: str = "fp32",
    cache_dir: str | os.PathLike | None = None,
) -> tuple[CLIP, Callable, Callable]:
    """``(model, train_transform, eval_transform)`` as open_clip returns them.

    ``model_name`` may also be ``"hf-hub:ORG/REPO"`` (then ``pretrained`` must be None). Like
    open_clip, the model is returned in training mode: call ``model.eval()`` before inference.
    """
    import torch

    from .checkpoints import load_checkpoint
    from .checkpoints.common import default_preprocess
    from .checkpoints.hub import is_hub_id
    from .checkpoints.pretrained import download_pretrained, pretrained_config, resolve_architecture
    from .models import build_model
    from .transforms import image_transform

    if precision not in PRECISIONS:
        raise UsageError(f"precision={precision!r}; use one of {list(PRECISIONS)}")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    if is_hub_id(model_name):
        if pretrained is not None:
            raise UsageError(f"{model_name}: a Hub model brings its own weights; pass pretrained=None")
        model, preprocess = load_checkpoint(model_name, device=device, dtype=dtype, cache_dir=cache_dir)
    elif pretrained is None:
        config = resolve_architecture(model_name, open_clip_first=True)
        model, preprocess = build_model(config).to(device=device, dtype=dtype), default_preprocess(config)
    elif Path(os.fspath(pretrained)).expanduser().exists():
        # a local file: the architecture is the name's, as when open_clip loads a state dict into it
        model, preprocess = load_checkpoint(
            Path(os.fspath(pretrained)).expanduser(), device=device, dtype=dtype,
            config=resolve_architecture(model_name, open_clip_first=True),
        )  # fmt: skip
    else:
        config, preprocess = pretrained_config(model_name, str(pretrained))
        path = download_pretrained(model_name, str(pretrained), cache_dir)
        model, _ = load_checkpoint(path, device=device, dtype=dtype, config=config)
    model.train()
    return model, image_transform(preprocess, train=True), image_transform(preprocess)


def create_model(model_name: str, pretrained: str | os.PathLike | None = None, **kwargs) -> CLIP:
    """open_clip's ``create_model``: the model alone (see :func:`create_model_and_transforms`)."""
    return create_model_and_transforms(model_name, pretrained, **kwargs)[0]


class Tokenizer:
    """open_clip's tokenizer interface over cliplab's: ``tokenizer(texts)`` -> LongTensor [N, context_length].

    Like open_clip's, too-long texts are truncated (keeping the end-of-text token), not refused.
    """

    def __init__(self, context_length: int = 77):
        self.context_length = context_length

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        from .tokenizer import get_tokenizer as shared

        return shared()(texts, context_length=context_length or self.context_length, truncate=True)

    def to_numpy(self, texts: str | Sequence[str], context_length: int | None = None) -> np.ndarray:
        from .tokenizer import get_tokenizer as shared

        return shared().to_numpy(texts, context_length=context_length or self.context_length, truncate=True)

    def encode(self, text: str) -> list[int]:
        from .tokenizer import get_tokenizer as shared

        return shared().encode(text)

    def decode(self, ids) -> str:
        from .tokenizer import get_tokenizer as shared

        return shared().decode(ids)

    def __repr__(self) -> str:
        return f"cliplab.compat.Tokenizer(context_length={self.context_length})"


def get_tokenizer(model_name: str = "ViT-B-32", context_length: int | None = None) -> Tokenizer:
    """open_clip's ``get_tokenizer``: CLIP's BPE tokenizer at the model's context length.

    ``model_name`` is a cliplab or open_clip name, or ``"hf-hub:ORG/REPO"`` (its config is read).
    """
    if context_length is None:
        context_length = _context_length(model_name)
    return Tokenizer(context_length)


def _context_length(model_name: str) -> int:
    from .checkpoints.hub import hub_file, is_hub_id
    from .checkpoints.open_clip import HUB_CONFIG, check_supported

    if is_hub_id(model_name):
        from .checkpoints.common import read_json

        config_file = hub_file(model_name, HUB_CONFIG)
        if config_file is not None:
            model_cfg = read_json(config_file).get("model_cfg") or {}
            check_supported(model_cfg, config_file)
            return int((model_cfg.get("text_cfg") or {}).get("context_length", 77))
        config_file = hub_file(model_name, "config.json")
        if config_file is None:
            raise UsageError(f"{model_name}: found neither {HUB_CONFIG} nor config.json in the repository")
        text_cfg = read_json(config_file).get("text_config") or {}
        return int(text_cfg.get("max_position_embeddings", 77))
    from .checkpoints.pretrained import resolve_architecture

    return resolve_architecture(model_name, open_clip_first=True).text.context_length
