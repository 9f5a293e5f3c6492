"""cliplab: CLIP models, tokenizer, preprocessing and checkpoints, plus training and evaluation.

The top level mirrors OpenAI's ``clip`` package (``load``, ``tokenize``, ``available_models``) and
open_clip's (``create_model_and_transforms``, ``get_tokenizer``, ``list_pretrained``, ``list_models``)::

    model, preprocess = cliplab.load("ViT-B/32")            # or a local checkpoint of any format
    logits_per_image, logits_per_text = model(images, cliplab.tokenize(["a dog", "a cat"]))

Importing the package does not import torch (the model classes load on first use), so the ONNX
encoder (:mod:`cliplab.onnx`) runs where torch is not installed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .compat import create_model_and_transforms, get_tokenizer
from .errors import UsageError
from .tokenizer import tokenize

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from .models import CLIP, CLIPConfig

__version__ = "0.1.0"
__all__ = [
    "CLIP",
    "CLIPConfig",
    "available_models",
    "create_model",
    "create_model_and_transforms",
    "get_tokenizer",
    "list_configs",
    "list_models",
    "list_pretrained",
    "load",
    "save",
    "tokenize",
]
# Names served from cliplab.models on first access (PEP 562), so `import cliplab` needs no torch.
_FROM_MODELS = ("CLIP", "CLIPConfig", "build_model", "get_config", "list_configs")


def __getattr__(name: str) -> Any:
    import importlib
    import importlib.util

    if name in _FROM_MODELS:
        return getattr(importlib.import_module(".models", __name__), name)
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule: cliplab.transforms ...
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'cliplab' has no attribute {name!r}")


def available_models() -> list[str]:
    """Names of OpenAI's released models that :func:`load` can download (as ``clip.available_models``)."""
    from .checkpoints import available_models as _available

    return _available()


def list_models() -> list[str]:
    """open_clip's model names whose architecture cliplab implements (see :func:`list_pretrained`)."""
    from .checkpoints.pretrained import list_models as _list

    return _list()


def list_pretrained(as_str: bool = False, include_unsupported: bool = False) -> list:
    """open_clip's pretrained ``(model name, tag)`` pairs that cliplab can load (downloaded on use)."""
    from .checkpoints.pretrained import list_pretrained as _list

    return _list(as_str=as_str, include_unsupported=include_unsupported)


def create_model(config: str | CLIPConfig) -> CLIP:
    """A randomly initialised model: a cliplab config name (:func:`list_configs`), an open_clip model
    name (:func:`list_models`) or a ``CLIPConfig``."""
    from .checkpoints.pretrained import resolve_architecture
    from .models import build_model

    return build_model(resolve_architecture(config) if isinstance(config, str) else config)


def load(
    name: str | os.PathLike,
    device: str | torch.device = "cpu",
    jit: bool = False,
    download_root: str | os.PathLike | None = None,
    **kwargs,
) -> tuple[CLIP, Callable[[Image.Image], torch.Tensor]]:
    """Load a model and its preprocessing, with OpenAI's ``clip.load`` signature.

    ``name`` is one of :func:`available_models` (downloaded, SHA256-checked, into ``download_root``
    or ``$CLIPLAB_CACHE``), ``"hf-hub:ORG/REPO[@REVISION]"``, or a local checkpoint of any supported
    format (detected). The model is in eval mode; on a CUDA device it is float16 as OpenAI's
    ``clip.load`` gives it, elsewhere float32 (pass ``dtype=`` to choose). ``jit=True`` is refused:
    cliplab never produces TorchScript models. Other keyword arguments (``dtype``, ``quick_gelu``,
    ``config``) go to :func:`cliplab.checkpoints.load_checkpoint`.
    """
    from .checkpoints import load_checkpoint
    from .transforms import image_transform

    if jit:
        raise UsageError(
            "cliplab.load(..., jit=True): cliplab does not produce TorchScript models (it never runs "
            "TorchScript code from a file); call it with jit=False, or use torch.compile on the model"
        )
    if download_root is not None:
        kwargs["cache_dir"] = download_root
    if "dtype" not in kwargs and str(device).startswith("cuda"):
        import torch

        kwargs["dtype"] = torch.float16  # what OpenAI's clip.load(jit=False) returns on a GPU
    model, preprocess_cfg = load_checkpoint(name, device=device, **kwargs)
    return model, image_transform(preprocess_cfg)


def save(model: CLIP, path: str | os.PathLike, **kwargs) -> os.PathLike:
    """Write ``model`` in cliplab's format (safetensors weights + JSON config + README), atomically.

    ``model`` may be wrapped by ``DistributedDataParallel`` or ``torch.compile``.
    """
    from .checkpoints import save_checkpoint

    kwargs.setdefault("card", True)
    return save_checkpoint(model, path, **kwargs)
