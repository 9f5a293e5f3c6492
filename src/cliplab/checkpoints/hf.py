"""Hugging Face ``CLIPModel`` directories <-> OpenAI's layout, in both directions.

HF keeps separate q/k/v projections (ours are packed into ``in_proj_weight`` in q, k, v order, as in
``nn.MultiheadAttention``), stores both output projections as ``Linear`` weights (transposed against
ours) and renames every module. The architecture comes from the weights' shapes plus ``config.json``
for what shapes cannot say: head counts and ``hidden_act`` (``quick_gelu`` or exact ``gelu``).
Sub-config entries missing from ``config.json`` take HF's ``CLIPTextConfig``/``CLIPVisionConfig``
defaults (8 text heads, 12 vision heads, quick_gelu), as transformers itself does. HF has ViTs only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch

from ..fileio import atomic_write_dir
from ..models import CLIP, CLIPConfig, infer_config
from ..models.config import mlp_width
from ..transforms import PreprocessConfig
from .common import CheckpointError, Loaded, read_json, read_safetensors, torch_load

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_FIXED = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",  # sic: HF's spelling
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "logit_scale": "logit_scale",
}
_TRANSPOSED = {"text_projection.weight": "text_projection", "visual_projection.weight": "visual.proj"}
_BLOCK = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_HF_LAYER = re.compile(r"^(text|vision)_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_OUR_LAYER = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_TOWER_PREFIX = {"text": "", "vision": "visual."}


def is_hf_dir(path: Path) -> bool:
    if not (path.is_dir() and (path / "config.json").is_file()):
        return False
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and (cfg.get("model_type") == "clip" or "vision_config" in cfg)


def read_hf(path: Path) -> Loaded:
    """A ``CLIPModel`` saved by ``save_pretrained`` (``path`` is its directory or its weights file)."""
    directory = path if path.is_dir() else path.parent
    hf_config = read_json(directory / "config.json")
    raw = _read_weights(path) if path.is_file() else _read_weights(_find_weights(directory))
    sd = from_hf_state_dict(raw, source=path)
    config = config_from_hf(hf_config, sd, directory / "config.json")
    return Loaded(sd, "hf", config=config, preprocess=_preprocess(directory, config))


def from_hf_state_dict(
    hf_sd: Mapping[str, torch.Tensor], source: object = "state dict"
) -> dict[str, torch.Tensor]:
    """HF ``CLIPModel`` weights -> OpenAI-layout weights (the keys of ``cliplab.models.CLIP``)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}  # (block prefix, weight|bias) -> {q, k, v}
    unknown = []
    for key, value in hf_sd.items():
        if key.endswith("position_ids"):
            continue  # an index buffer older transformers versions saved, not a weight
        if key in _FIXED:
            out[_FIXED[key]] = value
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t().contiguous()
        elif m := _HF_LAYER.match(key):
            tower, layer, module, kind = m.groups()
            prefix = f"{_TOWER_PREFIX[tower]}transformer.resblocks.{layer}."
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((prefix, kind), {})[module[-6]] = value  # "q", "k" or "v"
            elif module in _BLOCK:
                out[f"{prefix}{_BLOCK[module]}.{kind}"] = value
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{source} (detected format: hf): {len(unknown)} key(s) have no counterpart in CLIP, e.g. {sorted(unknown)[:4]}"
        )
    for (prefix, kind), parts in qkv.items():
        if sorted(parts) != ["k", "q", "v"]:
            raise CheckpointError(
                f"{source} (detected format: hf): {prefix} has {kind}s only for {sorted(parts)} of q, k, v"
            )
        out[f"{prefix}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def to_hf_state_dict(model_or_state_dict: CLIP | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI-layout weights (or a ViT ``CLIP``) -> the keys of HF's ``CLIPModel``."""
    sd = model_or_state_dict.state_dict() if isinstance(model_or_state_dict, CLIP) else model_or_state_dict
    if "visual.proj" not in sd:
        raise CheckpointError(
            "Hugging Face's CLIPModel has no ResNet image tower; only ViT models can be exported"
        )
    fixed = {ours: theirs for theirs, ours in _FIXED.items()}
    transposed = {ours: theirs for theirs, ours in _TRANSPOSED.items()}
    block = {ours: theirs for theirs, ours in _BLOCK.items()}
    out = {}
    for key, value in sd.items():
        value = value.detach()
        if key in fixed:
            out[fixed[key]] = value.clone()
        elif key in transposed:
            out[transposed[key]] = value.t().contiguous()
        elif m := _OUR_LAYER.match(key):
            visual, layer, rest = m.groups()
            prefix = f"{'vision' if visual else 'text'}_model.encoder.layers.{layer}."
            module, kind = rest.rsplit(".", 1)
            if module == "attn" and kind.startswith("in_proj_"):
                kind = kind[len("in_proj_") :]
                for name, part in zip("qkv", value.chunk(3, dim=0), strict=True):
                    out[f"{prefix}self_attn.{name}_proj.{kind}"] = part.clone()
            else:
                out[f"{prefix}{block[module]}.{kind}"] = value.clone()
        else:
            raise CheckpointError(f"weight {key!r} has no counterpart in Hugging Face's CLIPModel")
    return out


def to_hf_config(config: CLIPConfig) -> dict:
    """The ``config.json`` of an HF ``CLIPModel`` with this architecture (ViT only)."""
    v, t = config.vision, config.text
    if v.kind != "vit":
        raise CheckpointError(
            "Hugging Face's CLIPModel has no ResNet image tower; only ViT models can be exported"
        )
    act = "quick_gelu" if config.quick_gelu else "gelu"
    return {
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": config.embed_dim,
        "logit_scale_init_value": config.init_logit_scale,
        "text_config": {
            "vocab_size": t.vocab_size,
            "hidden_size": t.width,
            "intermediate_size": mlp_width(t.width, t.mlp_ratio),
            "num_hidden_layers": t.layers,
            "num_attention_heads": t.heads,
            "max_position_embeddings": t.context_length,
            "hidden_act": act,
            "layer_norm_eps": 1e-5,
            "projection_dim": config.embed_dim,
            # CLIP's tokenizer ids; with eos != 2, HF pools at the first end-of-text token, the same
            # position as our argmax since end-of-text is the highest id.
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 49407,  # the exported tokenizer pads with end-of-text (formats.py)
        },
        "vision_config": {
            "hidden_size": v.width,
            "intermediate_size": mlp_width(v.width, v.mlp_ratio),
            "num_hidden_layers": v.layers,
            "num_attention_heads": v.heads,
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "num_channels": 3,
            "hidden_act": act,
            "layer_norm_eps": 1e-5,
            "projection_dim": config.embed_dim,
        },
    }


def save_hf_checkpoint(model: CLIP, directory: str | Path) -> Path:
    """Write ``model`` as an HF ``CLIPModel`` directory (``config.json`` + ``model.safetensors``)."""
    return atomic_write_dir(Path(directory), lambda tmp: write_hf_model(model, tmp))


def write_hf_model(model: CLIP, directory: Path) -> None:
    """``config.json`` and ``model.safetensors`` of an HF ``CLIPModel`` into ``directory`` (not atomic:
    call it on the temporary directory of ``atomic_write_dir``)."""
    from safetensors.torch import save_file

    config, weights = to_hf_config(model.config), to_hf_state_dict(model)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    save_file(
        {k: v.cpu().contiguous() for k, v in weights.items()},
        str(directory / "model.safetensors"),
        {"format": "pt"},
    )


def config_from_hf(hf_config: Mapping, sd: Mapping[str, torch.Tensor], source: Path) -> CLIPConfig:
    """Shapes from the (already converted) weights; heads and activation from ``config.json``."""
    text_cfg, vision_cfg = hf_config.get("text_config") or {}, hf_config.get("vision_config") or {}
    acts = {text_cfg.get("hidden_act", "quick_gelu"), vision_cfg.get("hidden_act", "quick_gelu")}
    if len(acts) != 1 or not acts <= {"quick_gelu", "gelu"}:
        raise CheckpointError(
            f"{source}: hidden_act {sorted(acts)}; cliplab supports 'quick_gelu' or 'gelu', the same in both towers"
        )
    for name, sub in (("text_config", text_cfg), ("vision_config", vision_cfg)):
        if abs(float(sub.get("layer_norm_eps", 1e-5)) - 1e-5) > 1e-12:
            raise CheckpointError(
                f"{source}: {name}.layer_norm_eps={sub['layer_norm_eps']}; cliplab's LayerNorm uses 1e-5"
            )
    try:
        cfg = infer_config(sd, quick_gelu=acts == {"quick_gelu"})
        return replace(
            cfg,
            vision=replace(cfg.vision, heads=int(vision_cfg.get("num_attention_heads", 12))),
            text=replace(cfg.text, heads=int(text_cfg.get("num_attention_heads", 8))),
        )
    except (KeyError, IndexError, ValueError) as exc:
        raise CheckpointError(
            f"{source}: the weights and config do not describe a supported CLIP ({exc})"
        ) from None


def _find_weights(directory: Path) -> Path:
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(
        f"{directory}: an HF CLIP directory needs one of {list(WEIGHT_FILES)}; none is there"
    )


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.name.endswith(".index.json"):  # sharded: {"weight_map": {key: shard file}}
        shards = sorted(set(read_json(path).get("weight_map", {}).values()))
        if not shards:
            raise CheckpointError(f"{path}: no 'weight_map' entries")
        out: dict[str, torch.Tensor] = {}
        for shard in shards:
            out.update(_read_weights(path.parent / shard))
        return out
    if path.suffix == ".safetensors":
        return read_safetensors(path)[0]
    obj = torch_load(path, mmap=True)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return dict(obj)


def _preprocess(directory: Path, config: CLIPConfig) -> PreprocessConfig:
    """Mean and std from ``preprocessor_config.json`` when present; OpenAI's otherwise."""
    file = directory / "preprocessor_config.json"
    pre = read_json(file) if file.is_file() else {}
    kwargs: dict = {"image_size": config.vision.image_size}
    if pre.get("image_mean") is not None:
        kwargs["mean"] = tuple(pre["image_mean"])
    if pre.get("image_std") is not None:
        kwargs["std"] = tuple(pre["image_std"])
    return PreprocessConfig(**kwargs)
