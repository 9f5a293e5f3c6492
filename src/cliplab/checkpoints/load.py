"""The one entry point: detect a checkpoint's format, read it, build the model.

Formats (as :func:`detect_format` names them):

* ``"cliplab"``    cliplab's own directory or self-describing ``.safetensors`` file (see ``native``)
* ``"openai-jit"`` OpenAI's released TorchScript ``.pt`` archives
* ``"openai"``     a ``torch.save``-d state dict in OpenAI's layout; a plain open_clip state dict has
  the same keys and is reported as this
* ``"open_clip"``  open_clip training checkpoints, ``CustomTextCLIP`` state dicts, hub export directories
* ``"hf"``         Hugging Face ``CLIPModel`` directories (``config.json`` + weights)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from ..models import CLIP, CLIPConfig
from ..transforms import PreprocessConfig
from . import hf, native, open_clip, openai
from .common import (
    CheckpointError,
    Loaded,
    build_model,
    default_preprocess,
    is_torchscript_zip,
    read_weights_file,
    resolve_config,
)
from .download import _MODELS, download_model
from .hub import hub_snapshot, is_hub_id
from .pretrained import resolve_architecture

FORMATS = ("cliplab", "openai-jit", "openai", "open_clip", "hf")


def load_checkpoint(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    cache_dir: str | os.PathLike | None = None,
    quick_gelu: bool | None = None,
    config: CLIPConfig | str | None = None,
) -> tuple[CLIP, PreprocessConfig]:
    """Load a model and its preprocessing config from an OpenAI model name or a checkpoint of any format.

    The model is in eval mode on ``device``, in float32 unless ``dtype`` is given (OpenAI's fp16
    weights are upcast). The architecture comes from the file when it records one (cliplab, HF,
    open_clip hub exports), otherwise it is inferred from the weights' shapes, assuming 64-dim
    heads and OpenAI's QuickGELU. ``quick_gelu`` overrides the activation (most open_clip models
    trained from scratch use exact GELU: pass ``quick_gelu=False``); ``config`` (a name or
    ``CLIPConfig``) overrides the whole architecture. ``"hf-hub:ORG/REPO[@REVISION]"`` loads an
    open_clip- or transformers-layout repository through huggingface_hub (see ``hub.py``).
    """
    path = resolve(name_or_path, cache_dir)
    fmt, contents = _detect(path)
    loaded = _read(fmt, path, contents)
    cfg = resolve_architecture(config) if isinstance(config, str) else config
    cfg = resolve_config(loaded, path, cfg, quick_gelu)
    model = build_model(loaded.state_dict, cfg, path, fmt)
    model = model.to(device=device, dtype=dtype or torch.float32)
    return model, loaded.preprocess or default_preprocess(cfg)


def resolve(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """An existing local path, the cached download of OpenAI's model with that name, or a Hub snapshot."""
    if is_hub_id(name_or_path):
        return hub_snapshot(str(name_or_path), cache_dir)
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    if isinstance(name_or_path, str) and name_or_path in _MODELS:
        return download_model(name_or_path, cache_dir)
    raise CheckpointError(
        f"{name_or_path!s} is neither an existing file or directory nor a known model name "
        f"({', '.join(_MODELS)}) nor 'hf-hub:ORG/REPO'; for open_clip's weights use "
        "cliplab.create_model_and_transforms(name, pretrained=TAG)"
    )


def detect_format(path: str | os.PathLike) -> str:
    """Which of :data:`FORMATS` the file or directory at ``path`` is; CheckpointError if none."""
    return _detect(Path(path))[0]


def _detect(path: Path) -> tuple[str, object | None]:
    """The format, and the file's contents when telling it required reading them (else None).

    Most formats are told apart by a directory's config file, a zip's entry names or a
    safetensors header. A bare torch or safetensors file is told apart only by its keys, so it is
    read here, once (memory-mapped where torch allows, which reads a tensor's bytes only when they
    are used), and the reader takes what was read instead of reading the file again.
    """
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if path.is_dir():
        return _detect_dir(path), None
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes); the download or save was interrupted")
    if is_torchscript_zip(path):
        return "openai-jit", None
    # a weights file inside an export directory: the directory's config describes it
    if path.name in open_clip.HUB_WEIGHTS and open_clip.is_open_clip_dir(path.parent):
        return "open_clip", None
    if native.is_cliplab(path):
        return "cliplab", None
    if path.name in hf.WEIGHT_FILES and hf.is_hf_dir(path.parent):
        return "hf", None
    contents = read_weights_file(path, mmap=True)
    return _classify(contents, path), contents


def _read(fmt: str, path: Path, contents: object | None) -> Loaded:
    """The reader of ``fmt``; ``contents`` (what detection already read, or None) spares a second read."""
    if fmt == "cliplab":
        return native.read_cliplab(path)
    if fmt == "hf":
        return hf.read_hf(path)
    if fmt == "open_clip":
        return open_clip.read_open_clip(path, contents)
    return openai.read_openai(path, contents)


def _detect_dir(path: Path) -> str:
    if native.is_cliplab(path):
        return "cliplab"
    if open_clip.is_open_clip_dir(path):
        return "open_clip"
    if hf.is_hf_dir(path):
        return "hf"
    raise CheckpointError(
        f'{path} is a directory but not a checkpoint: expected config.json with "format": "cliplab", '
        f"a Hugging Face CLIPModel config.json, or {open_clip.HUB_CONFIG}"
    )


def _classify(obj: object, path: Path) -> str:
    """The format of an in-memory state dict (or training checkpoint) by its keys."""
    if open_clip.looks_like_open_clip(obj):
        return "open_clip"
    if isinstance(obj, Mapping):
        keys = {k for k in obj if isinstance(k, str)}
        if any(k.startswith(("text_model.", "vision_model.")) for k in keys):
            raise CheckpointError(
                f"{path} holds Hugging Face CLIPModel weights; load the directory that holds it and its config.json"
            )
        if "token_embedding.weight" in keys and any(k.startswith("visual.") for k in keys):
            return "openai"
        sample = sorted(keys)[:6]
    else:
        sample = type(obj).__name__
    raise CheckpointError(
        f"{path}: unrecognised checkpoint contents ({sample}); expected a CLIP state dict in OpenAI, open_clip "
        "or Hugging Face layout, an OpenAI .pt archive, or a cliplab checkpoint"
    )
