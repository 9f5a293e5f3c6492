"""Hugging Face ``CLIPModel`` <-> cliplab: key mapping, config reading and numerical parity.

Every ViT shape in the registry is checked against transformers' own forward pass with random
weights at batch 1, at full depth (ViT-B/16 and the ViT-L models take 10-15 s each on a 2-core CPU,
so they are marked slow), plus a quick 2-block version of each deep shape that isolates the key mapping.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from cliplab.checkpoints import (
    CheckpointError,
    detect_format,
    from_hf_state_dict,
    load_checkpoint,
    save_hf_checkpoint,
    to_hf_state_dict,
)
from cliplab.models import CLIP, CLIPConfig, get_config, list_configs
from cliplab.transforms import PreprocessConfig

try:
    import transformers
except ImportError:  # every test here then skips, or fails under CI: see the `requires` marker
    transformers = None

pytestmark = pytest.mark.requires("transformers", "Hugging Face CLIPModel parity")

SOT, EOT = 49406, 49407
VIT_SHAPES = [n for n in list_configs() if get_config(n).vision.kind == "vit"]
FULL_DEPTH_BY_DEFAULT = {"micro", "tiny", "ViT-B/32"}
DEEP = [n for n in VIT_SHAPES if n not in FULL_DEPTH_BY_DEFAULT]
# Full depth of the released models beyond ViT-B/32 takes 10-15 s each: full suite only.
SLOW_FULL_DEPTH = {"ViT-B/16", "ViT-L/14", "ViT-L/14@336px"}


def hf_config(cfg: CLIPConfig, eos_token_id: int = EOT) -> transformers.CLIPConfig:
    """transformers' config for a cliplab architecture, written out field by field."""
    v, t = cfg.vision, cfg.text
    act = "quick_gelu" if cfg.quick_gelu else "gelu"
    return transformers.CLIPConfig(
        text_config=dict(
            vocab_size=t.vocab_size,
            hidden_size=t.width,
            intermediate_size=4 * t.width,
            num_hidden_layers=t.layers,
            num_attention_heads=t.heads,
            max_position_embeddings=t.context_length,
            hidden_act=act,
            bos_token_id=SOT,
            eos_token_id=eos_token_id,
            pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=v.width,
            intermediate_size=4 * v.width,
            num_hidden_layers=v.layers,
            num_attention_heads=v.heads,
            image_size=v.image_size,
            patch_size=v.patch_size,
            hidden_act=act,
        ),
        projection_dim=cfg.embed_dim,
    )


@torch.no_grad()
def random_hf_model(cfg: CLIPConfig, seed: int = 0, **kwargs):
    """An HF CLIPModel with random weights, skipping transformers' slow initialisation."""
    with torch.device("meta"):
        model = transformers.CLIPModel(hf_config(cfg, **kwargs))
    model.to_empty(device="cpu")
    # Slices of one shared pool at random offsets: distinct values per tensor, and far faster than
    # drawing 150M+ fresh normals for the big shapes.
    g = torch.Generator().manual_seed(seed)
    pool = torch.randn(1 << 22, generator=g)
    for name, t in model.named_parameters():
        start = int(torch.randint(0, pool.numel(), (1,), generator=g))
        reps = (start + t.numel()) // pool.numel() + 1
        noise = (
            pool.repeat(reps)[start : start + t.numel()].view(t.shape)
            if reps > 1
            else pool[start : start + t.numel()].view(t.shape)
        )
        if name == "logit_scale":
            t.fill_(math.log(1 / 0.07))
        elif "layer_norm" in name or "layrnorm" in name or "layernorm" in name:
            t.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
        elif t.dim() >= 2:
            t.copy_(noise * t[0].numel() ** -0.5)  # 1/sqrt(fan_in) keeps activations O(1) at any width
        else:
            t.copy_(0.05 * noise)
    for name, buf in model.named_buffers():  # position_ids are not saved; to_empty left them garbage
        if name.endswith("position_ids"):
            buf.copy_(torch.arange(buf.shape[-1]).expand_as(buf))
    return model.eval()


def random_tokens(n: int, context: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(n, context, dtype=torch.long)
    for i in range(n):
        length = int(torch.randint(2, context + 1, (1,), generator=g))
        out[i, 0] = SOT
        out[i, 1 : length - 1] = torch.randint(1, SOT, (length - 2,), generator=g)
        out[i, length - 1] = EOT
    return out


@torch.no_grad()
def assert_parity(ours: CLIP, hf, n_images: int = 1, n_texts: int = 1, atol: float = 1e-4) -> None:
    """Normalised embeddings within ``atol`` and logits within ``atol`` times the logit scale.

    One HF forward gives its normalised embeddings and logits; one pass of each of our towers too.
    """
    cfg = ours.config
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n_images, 3, cfg.vision.image_size, cfg.vision.image_size, generator=g)
    t = random_tokens(n_texts, cfg.text.context_length)
    out = hf(input_ids=t, pixel_values=x)
    img, txt = ours.encode_image(x, normalize=True), ours.encode_text(t, normalize=True)
    assert (img - out.image_embeds).abs().max() <= atol
    assert (txt - out.text_embeds).abs().max() <= atol
    logits = (
        ours.logit_scale.exp() * img @ txt.t()
    )  # what CLIP.forward computes, without re-running the towers
    assert (logits - out.logits_per_image).abs().max() <= atol * float(ours.logit_scale.exp()) * 2


def _tensor(out) -> torch.Tensor:
    """transformers 5 returns a model output from get_*_features; 4.x returned the tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def shallow(cfg: CLIPConfig, layers: int = 2) -> CLIPConfig:
    return replace(cfg, vision=replace(cfg.vision, layers=layers), text=replace(cfg.text, layers=layers))


def check_shape(name: str, tmp_path, full_depth: bool) -> None:
    cfg = get_config(name) if full_depth else shallow(get_config(name))
    hf = random_hf_model(cfg)
    hf.save_pretrained(tmp_path)
    assert detect_format(tmp_path) == "hf"
    ours, pre = load_checkpoint(tmp_path)
    assert ours.config == cfg and pre == PreprocessConfig(image_size=cfg.vision.image_size)
    assert_parity(ours, hf)


@pytest.mark.parametrize("name", VIT_SHAPES)
def test_parity_every_vit_shape(name, tmp_path):
    check_shape(name, tmp_path, full_depth=name in FULL_DEPTH_BY_DEFAULT)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_FULL_DEPTH else n for n in DEEP]
)
def test_parity_full_depth(name, tmp_path):
    check_shape(name, tmp_path, full_depth=True)


@torch.no_grad()
def test_parity_batches_gelu_and_feature_api(tmp_path):
    cfg = replace(get_config("micro"), quick_gelu=False)
    hf = random_hf_model(cfg, seed=3)
    hf.save_pretrained(tmp_path)
    ours, _ = load_checkpoint(tmp_path)
    assert ours.config.quick_gelu is False
    assert_parity(ours, hf, n_images=3, n_texts=4)
    x, t = torch.randn(2, 3, 32, 32), random_tokens(3, 32, seed=2)
    assert torch.allclose(ours.encode_image(x), _tensor(hf.get_image_features(pixel_values=x)), atol=1e-5)
    assert torch.allclose(ours.encode_text(t), _tensor(hf.get_text_features(input_ids=t)), atol=1e-5)
    assert torch.allclose(ours(x, t)[0], hf(input_ids=t, pixel_values=x).logits_per_image, atol=1e-4)


def test_legacy_eos_token_id_pools_at_argmax(tmp_path):
    # HF configs saved before transformers 4.31 carry eos_token_id=2 and pool at argmax(input_ids)
    hf = random_hf_model(get_config("micro"), seed=4, eos_token_id=2)
    hf.save_pretrained(tmp_path)
    assert_parity(load_checkpoint(tmp_path)[0], hf, n_texts=3)


def test_pytorch_model_bin_and_preprocessor_config(tmp_path):
    hf = random_hf_model(get_config("micro"), seed=5)
    hf.config.save_pretrained(tmp_path)
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": mean, "image_std": std}))
    assert detect_format(tmp_path) == "hf" and detect_format(tmp_path / "pytorch_model.bin") == "hf"
    ours, pre = load_checkpoint(tmp_path / "pytorch_model.bin")
    assert pre == PreprocessConfig(image_size=32, mean=tuple(mean), std=tuple(std))
    assert_parity(ours, hf)


def test_sharded_safetensors(tmp_path):
    from safetensors.torch import save_file

    hf = random_hf_model(get_config("micro"), seed=6)
    hf.config.save_pretrained(tmp_path)
    sd = {k: v for k, v in hf.state_dict().items() if not k.endswith("position_ids")}
    keys = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for file, names in shards.items():
        save_file({k: sd[k].contiguous() for k in names}, str(tmp_path / file))
    weight_map = {k: file for file, names in shards.items() for k in names}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert_parity(load_checkpoint(tmp_path)[0], hf)


def test_export_to_hf_loads_in_transformers(tmp_path):
    torch.manual_seed(0)
    ours = CLIP(get_config("tiny")).eval()
    save_hf_checkpoint(ours, tmp_path / "hf")
    hf = transformers.CLIPModel.from_pretrained(tmp_path / "hf").eval()
    assert_parity(ours, hf, n_images=2, n_texts=2)
    again, _ = load_checkpoint(tmp_path / "hf")
    assert again.config == ours.config
    theirs = ours.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in again.state_dict().items())


def test_key_mapping_is_a_bijection():
    torch.manual_seed(0)
    sd = CLIP(get_config("micro")).state_dict()
    hf_sd = to_hf_state_dict(sd)
    expected = {
        k for k in random_hf_model(get_config("micro")).state_dict() if not k.endswith("position_ids")
    }
    assert set(hf_sd) == expected
    back = from_hf_state_dict(hf_sd)
    assert sorted(back) == sorted(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


def test_resnet_cannot_be_exported_and_bad_keys_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="ResNet"):
        to_hf_state_dict(CLIP(get_config("tiny-rn")))
    hf_sd = to_hf_state_dict(CLIP(get_config("micro")).state_dict())
    hf_sd["vision_model.encoder.layers.0.self_attn.rotary.weight"] = torch.zeros(1)
    del hf_sd["text_model.encoder.layers.1.self_attn.k_proj.bias"]
    with pytest.raises(CheckpointError, match="rotary"):
        from_hf_state_dict(hf_sd)
    del hf_sd["vision_model.encoder.layers.0.self_attn.rotary.weight"]
    with pytest.raises(CheckpointError, match=r"resblocks\.1\..*only for \['q', 'v'\]"):
        from_hf_state_dict(hf_sd)
