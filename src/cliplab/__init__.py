"""cliplab: CLIP models, tokenizer, preprocessing and checkpoints, plus training and evaluation.

The top level mirrors OpenAI's ``clip`` package::

    model, preprocess = cliplab.load("ViT-B/32")            # or a local checkpoint of any format
    logits_per_image, logits_per_text = model(images, cliplab.tokenize(["a dog", "a cat"]))
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from .models import CLIP, CLIPConfig, build_model, get_config, list_configs
from .tokenizer import tokenize

if TYPE_CHECKING:
    import torch
    from PIL import Image

__version__ = "0.1.0"
__all__ = [
    "CLIP",
    "CLIPConfig",
    "available_models",
    "create_model",
    "list_configs",
    "load",
    "save",
    "tokenize",
]


def available_models() -> list[str]:
    """Names of OpenAI's released models that :func:`load` can download."""
    from .checkpoints import available_models as _available

    return _available()


def create_model(config: str | CLIPConfig) -> CLIP:
    """A randomly initialised model of a named architecture (see :func:`list_configs`) or config."""
    return build_model(get_config(config) if isinstance(config, str) else config)


def load(
    name_or_path: str | os.PathLike, device: str = "cpu", **kwargs
) -> tuple[CLIP, Callable[[Image.Image], torch.Tensor]]:
    """Load a model and its preprocessing from a name (downloads) or any supported checkpoint file.

    Formats are detected: OpenAI ``.pt`` archives and state dicts, open_clip checkpoints, Hugging Face
    ``CLIPModel`` directories and cliplab's own safetensors format. The model is in eval mode.
    """
    from .checkpoints import load_checkpoint
    from .transforms import image_transform

    model, preprocess_cfg = load_checkpoint(name_or_path, device=device, **kwargs)
    return model, image_transform(preprocess_cfg)


def save(model: CLIP, path: str | os.PathLike, **kwargs) -> os.PathLike:
    """Write ``model`` in cliplab's format (safetensors weights + JSON config), atomically."""
    from .checkpoints import save_checkpoint

    return save_checkpoint(model, path, **kwargs)
