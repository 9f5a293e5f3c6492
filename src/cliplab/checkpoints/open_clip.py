"""open_clip checkpoints: state dicts, training checkpoints and hub exports, mapped to OpenAI's layout.

open_clip's default ``CLIP`` class uses OpenAI's key names, so its plain state dicts need no
renaming. Three things differ:

* training checkpoints wrap the weights, ``{"epoch", "name", "state_dict", "optimizer", ...}``, with
  DDP's ``module.`` prefix on every key;
* ``CustomTextCLIP`` (any model config with ``custom_text``) nests the text tower under ``text.``;
  its projection may be a ``Linear`` (``text.text_projection.weight``, stored transposed);
* hub exports are directories with ``open_clip_config.json`` (model and preprocessing config) and
  ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``. Their model config is
  authoritative: open_clip models use exact GELU unless ``quick_gelu`` is set, and head counts come
  from ``head_width``, not from an assumed 64.

Text towers from Hugging Face (``hf_model_name``) and timm image towers are not supported.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ..models import CLIPConfig, TextConfig, VisionConfig
from ..transforms import INTERPOLATIONS, RESIZE_MODES, PreprocessConfig
from .common import CheckpointError, Loaded, read_json, read_weights_file, strip_prefix

HUB_CONFIG = "open_clip_config.json"
HUB_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# Text-tower keys of CustomTextCLIP that keep their name once the "text." prefix is removed.
_TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
# Vision/text config entries that change the architecture away from OpenAI's, with their neutral values.
_NEUTRAL = {
    "mlp_ratio": 4.0,
    "ls_init_value": None,
    "attentional_pool": False,
    "no_ln_pre": False,
    "final_ln_after_pool": False,
    "output_tokens": False,
    "timm_model_name": None,
    "hf_model_name": None,
    "proj_bias": False,
    "embed_cls": False,
}


def is_open_clip_dir(path: Path) -> bool:
    return path.is_dir() and (path / HUB_CONFIG).is_file()


def looks_like_open_clip(obj: object) -> bool:
    """True for a training-checkpoint wrapper, DDP-prefixed keys or the CustomTextCLIP layout."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        return True
    if not isinstance(obj, Mapping):
        return False
    keys = [k for k in obj if isinstance(k, str)]
    return any(k.startswith(("module.", "_orig_mod.", "text.")) for k in keys)


def read_open_clip(path: Path) -> Loaded:
    """Weights (OpenAI layout) and, for hub exports, model and preprocessing config."""
    if path.is_dir():
        return _read_hub_dir(path)
    if path.name in HUB_WEIGHTS and is_open_clip_dir(path.parent):
        return _read_hub_dir(path.parent)
    obj = read_weights_file(path)
    config = preprocess = None
    if isinstance(obj, Mapping) and isinstance(obj.get("model_config"), Mapping):
        # cliplab's own training checkpoints carry their architecture and preprocessing
        config = CLIPConfig.from_dict(obj["model_config"], source=f"{path}: model_config")
        if isinstance(obj.get("preprocess"), Mapping):
            preprocess = PreprocessConfig.from_dict(obj["preprocess"])
    return Loaded(
        to_openai_layout(unwrap(obj, path), path), "open_clip", config=config, preprocess=preprocess
    )


def unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """The model weights inside an open_clip training checkpoint (or a bare state dict)."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path}: expected a state dict or a training checkpoint dict, got {type(obj).__name__}"
        )
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(
            f"{path}: found no tensors; top-level keys are {sorted(map(str, obj))[:8]}. Expected a state dict "
            "or a training checkpoint with a 'state_dict' entry."
        )
    for prefix in ("module.", "_orig_mod."):
        sd = strip_prefix(sd, prefix)
    return sd


def to_openai_layout(sd: Mapping[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Map CustomTextCLIP's ``text.*`` keys to OpenAI's; other keys pass through unchanged."""
    out = {}
    for key, value in sd.items():
        if key == "attn_mask" or key.endswith(".attn_mask"):
            continue  # a causal-mask buffer some open_clip versions saved; it is not a weight
        if not key.startswith("text."):
            out[key] = value
            continue
        rest = key[len("text.") :]
        if rest == "text_projection.weight":
            out["text_projection"] = value.t().contiguous()  # Linear stores (out, in); ours is (in, out)
        elif rest.startswith(_TEXT_KEYS) and rest != "text_projection.bias":
            out[rest] = value
        else:
            raise CheckpointError(
                f"{path}: open_clip text-tower key {key!r} has no counterpart in cliplab's model (a Hugging Face "
                "text tower, a projection bias or a CoCa text tower); this open_clip variant is not supported."
            )
    return out


def _read_hub_dir(path: Path) -> Loaded:
    cfg_json = read_json(path / HUB_CONFIG)
    model_cfg = cfg_json.get("model_cfg")
    if not isinstance(model_cfg, Mapping):
        raise CheckpointError(f"{path / HUB_CONFIG}: no 'model_cfg' object; is this an open_clip hub export?")
    config = config_from_model_cfg(model_cfg, path / HUB_CONFIG)
    weights = next((path / w for w in HUB_WEIGHTS if (path / w).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{path}: has {HUB_CONFIG} but none of the weight files {list(HUB_WEIGHTS)}")
    sd = to_openai_layout(unwrap(read_weights_file(weights), weights), weights)
    preprocess = preprocess_from_cfg(cfg_json.get("preprocess_cfg") or {}, config.vision.image_size)
    return Loaded(sd, "open_clip", config=config, preprocess=preprocess)


def config_from_model_cfg(model_cfg: Mapping, source: Path) -> CLIPConfig:
    """cliplab's config from open_clip's ``model_cfg`` (its JSON model configs use the same fields)."""
    vision_cfg, text_cfg = model_cfg.get("vision_cfg") or {}, model_cfg.get("text_cfg") or {}
    for name, sub in (("vision_cfg", vision_cfg), ("text_cfg", text_cfg)):
        for key, neutral in _NEUTRAL.items():
            value = sub.get(key, neutral)
            if value != neutral and not (neutral is False and value is None):
                raise CheckpointError(
                    f"{source}: {name}.{key}={sub[key]!r} describes an architecture cliplab does not implement"
                )
    if text_cfg.get("pool_type", "argmax") != "argmax":
        raise CheckpointError(
            f"{source}: text_cfg.pool_type={text_cfg['pool_type']!r}; only 'argmax' is supported"
        )
    layers = vision_cfg.get("layers", 12)
    width = vision_cfg.get("width", 768)
    head_width = vision_cfg.get("head_width", 64)
    resnet = isinstance(layers, (list, tuple))
    # open_clip's defaults where a field is absent (its CLIPVisionCfg / CLIPTextCfg dataclasses)
    patch = {} if resnet else {"patch_size": vision_cfg.get("patch_size", 16)}
    try:
        vision = VisionConfig(
            kind="resnet" if resnet else "vit",
            image_size=int(vision_cfg.get("image_size", 224)),
            layers=tuple(layers) if resnet else int(layers),
            width=width,
            heads=(width * 32 if resnet else width) // head_width,
            **patch,
        )
        text = TextConfig(
            context_length=text_cfg.get("context_length", 77),
            vocab_size=text_cfg.get("vocab_size", 49408),
            width=text_cfg.get("width", 512),
            heads=text_cfg.get("heads", 8),
            layers=text_cfg.get("layers", 12),
        )
        return CLIPConfig(
            embed_dim=model_cfg["embed_dim"],
            vision=vision,
            text=text,
            quick_gelu=bool(model_cfg.get("quick_gelu", False)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: model_cfg does not describe a supported CLIP ({exc})") from None


def preprocess_from_cfg(pre: Mapping, image_size: int) -> PreprocessConfig:
    """open_clip's ``preprocess_cfg`` (mean, std, interpolation, resize_mode) as a PreprocessConfig."""
    size = pre.get("size", image_size)
    if isinstance(size, (list, tuple)):
        size = size[0]
    kwargs = {"image_size": int(size)}
    for key in ("mean", "std"):
        if pre.get(key) is not None:
            kwargs[key] = tuple(pre[key])
    if pre.get("interpolation") in INTERPOLATIONS:
        kwargs["interpolation"] = pre["interpolation"]
    if pre.get("resize_mode") in RESIZE_MODES:
        kwargs["resize_mode"] = pre["resize_mode"]
    return PreprocessConfig(**kwargs)
