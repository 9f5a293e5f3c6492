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
# Every open_clip model_cfg entry cliplab knows, by tower. "fields" map onto cliplab's config;
# "neutral" entries change the architecture unless they hold the value given (OpenAI's design);
# "ignored" ones do not change what a trained model computes (training-only settings, or settings
# that only matter together with a neutral entry set otherwise). Anything else is refused.
_FIELDS = {
    "vision_cfg": {"layers", "width", "head_width", "mlp_ratio", "patch_size", "image_size"},
    "text_cfg": {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"},
}
_COMMON_NEUTRAL = {
    "ls_init_value": None,
    "final_ln_after_pool": False,
    "output_tokens": False,
    "act_kwargs": None,
    "norm_kwargs": None,
    "block_type": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
}
_NEUTRAL = {
    "vision_cfg": {
        **_COMMON_NEUTRAL,
        "attentional_pool": False,
        "no_ln_pre": False,
        "pos_embed_type": "learnable",
        "pool_type": "tok",
        "global_average_pool": False,
        "input_patchnorm": False,
        "timm_model_name": None,
    },
    "text_cfg": {
        **_COMMON_NEUTRAL,
        "hf_model_name": None,
        "hf_tokenizer_name": None,
        "tokenizer_mode": None,
        "tokenizer_kwargs": None,
        "embed_cls": False,
        "no_causal_mask": False,
        "pool_type": "argmax",
        "proj_bias": False,
        "proj_type": "linear",
    },
    "": {"init_logit_bias": None, "multimodal_cfg": None},
}
_IGNORED = {
    "vision_cfg": {
        "patch_dropout", "attn_pooler_queries", "attn_pooler_heads", "timm_model_pretrained", "timm_pool",
        "timm_proj", "timm_proj_bias", "timm_drop", "timm_drop_path",
    },
    "text_cfg": {"pad_id", "eos_id", "hf_model_pretrained", "hf_proj_type", "hf_pooler_type"},
    "": {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "custom_text", "cast_dtype", "init_logit_scale"},
}  # fmt: skip
_EQUIVALENT = {"block_type": ("default",)}  # other spellings of a neutral value


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


def read_open_clip(path: Path, contents: object | None = None) -> Loaded:
    """Weights (OpenAI layout) and, for hub exports, model and preprocessing config.

    ``contents`` is the file's already-read contents (``read_weights_file``), when the caller has
    them: the file is then not read again.
    """
    if contents is None and path.is_dir():
        return _read_hub_dir(path)
    if contents is None and path.name in HUB_WEIGHTS and is_open_clip_dir(path.parent):
        return _read_hub_dir(path.parent)
    obj = read_weights_file(path, mmap=True) if contents is None else contents
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
    sd = to_openai_layout(unwrap(read_weights_file(weights, mmap=True), weights), weights)
    preprocess = preprocess_from_cfg(cfg_json.get("preprocess_cfg") or {}, config.vision.image_size)
    return Loaded(sd, "open_clip", config=config, preprocess=preprocess)


def config_from_model_cfg(model_cfg: Mapping, source: Path) -> CLIPConfig:
    """cliplab's config from open_clip's ``model_cfg`` (its JSON model configs use the same fields)."""
    vision_cfg, text_cfg = model_cfg.get("vision_cfg") or {}, model_cfg.get("text_cfg") or {}
    check_supported(model_cfg, source)
    layers = vision_cfg.get("layers", 12)
    width = vision_cfg.get("width", 768)
    head_width = vision_cfg.get("head_width", 64)
    resnet = isinstance(layers, (list, tuple))
    # open_clip's defaults where a field is absent (its CLIPVisionCfg / CLIPTextCfg dataclasses)
    vit_only = {} if resnet else {"patch_size": vision_cfg.get("patch_size", 16)}
    if not resnet:
        vit_only["mlp_ratio"] = float(vision_cfg.get("mlp_ratio", 4.0))
    try:
        vision = VisionConfig(
            kind="resnet" if resnet else "vit",
            image_size=_square_size(vision_cfg.get("image_size", 224)),
            layers=tuple(layers) if resnet else int(layers),
            width=width,
            heads=(width * 32 if resnet else width) // head_width,
            **vit_only,
        )
        text = TextConfig(
            context_length=text_cfg.get("context_length", 77),
            vocab_size=text_cfg.get("vocab_size", 49408),
            width=text_cfg.get("width", 512),
            heads=text_cfg.get("heads", 8),
            layers=text_cfg.get("layers", 12),
            mlp_ratio=float(text_cfg.get("mlp_ratio", 4.0)),
        )
        return CLIPConfig(
            embed_dim=model_cfg["embed_dim"],
            vision=vision,
            text=text,
            quick_gelu=bool(model_cfg.get("quick_gelu", False)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{source}: model_cfg does not describe a supported CLIP ({exc})") from None


def check_supported(model_cfg: Mapping, source: object) -> None:
    """Refuse an open_clip ``model_cfg`` whose towers pool, normalise or embed differently from cliplab's.

    Loading such weights into cliplab's model would give a model that runs but computes something
    else, so every entry is checked (see ``_FIELDS``, ``_NEUTRAL`` and ``_IGNORED``).
    """
    for section in ("", "vision_cfg", "text_cfg"):
        cfg = model_cfg if not section else (model_cfg.get(section) or {})
        if not isinstance(cfg, Mapping):
            raise CheckpointError(f"{source}: {section} is a {type(cfg).__name__}, expected an object")
        where = f"{section}." if section else ""
        for key, value in cfg.items():
            if key in _FIELDS.get(section, ()) or key in _IGNORED[section]:
                continue
            if key not in _NEUTRAL[section]:
                raise CheckpointError(
                    f"{source}: {where}{key} is an open_clip setting cliplab does not know; refusing to load a "
                    "model that might compute something else"
                )
            neutral = _NEUTRAL[section][key]
            if value == neutral or value in _EQUIVALENT.get(key, ()) or (neutral is False and value is None):
                continue
            raise CheckpointError(
                f"{source}: {where}{key}={value!r} describes an architecture cliplab does not implement "
                f"(cliplab supports {where}{key}={neutral!r} only); use open_clip for this model"
            )


def to_model_cfg(config: CLIPConfig) -> dict:
    """open_clip's ``model_cfg`` for a cliplab architecture (the inverse of :func:`config_from_model_cfg`)."""
    v, t = config.vision, config.text
    if v.stem_stride_conv != 1:
        raise CheckpointError(
            f"vision.stem_stride_conv={v.stem_stride_conv}: open_clip's ModifiedResNet downsamples in its first "
            "stem convolution and has no setting for another, so it would load these weights as a different "
            "model; save this model with cliplab.save (or export it to ONNX) instead"
        )
    vision: dict = {"image_size": v.image_size, "layers": v.layers, "width": v.width}
    if v.kind == "resnet":
        vision["layers"] = list(v.layers)
        vision["head_width"] = v.width * 32 // v.heads
    else:
        vision.update(patch_size=v.patch_size, head_width=v.width // v.heads, mlp_ratio=v.mlp_ratio)
    text = {
        "context_length": t.context_length,
        "vocab_size": t.vocab_size,
        "width": t.width,
        "heads": t.heads,
        "layers": t.layers,
        "mlp_ratio": t.mlp_ratio,
    }
    return {
        "embed_dim": config.embed_dim,
        "quick_gelu": config.quick_gelu,
        "vision_cfg": vision,
        "text_cfg": text,
    }


def _square_size(size: object) -> int:
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise ValueError(f"image_size {list(size)} is not square; cliplab's towers take square images")
        size = size[0]
    return int(size)


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
