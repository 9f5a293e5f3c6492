"""open_clip compatibility: model names, pretrained tags, ``create_model_and_transforms``,
``get_tokenizer``, and the refusal of open_clip architectures cliplab does not implement.

Parity of every supported open_clip architecture with open_clip itself (random weights, both
directions) is checked by benchmarks/check_open_clip_compat.py in an environment with open_clip
(results in benchmarks/results/check_open_clip_compat.json); here the architectures that go beyond
OpenAI's (other MLP ratios and head widths) are checked against transformers in test_export_hf.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import urllib.error
from dataclasses import replace

import pytest
import torch
from test_hub import directory_files, fake_hub_repo, offline_hub, random_model  # noqa: F401

import cliplab
from cliplab.checkpoints import CheckpointError, load_checkpoint, pretrained
from cliplab.checkpoints.open_clip import config_from_model_cfg
from cliplab.checkpoints.pretrained import (
    UnsupportedModelError,
    open_clip_model_cfgs,
    pretrained_config,
    pretrained_entry,
    resolve_architecture,
)
from cliplab.export import export_open_clip
from cliplab.models.config import UnknownConfigError, mlp_width
from cliplab.transforms import EvalTransform, TrainTransform

# --- names and tags -------------------------------------------------------------------------------


def test_open_clip_names_are_aliases_with_open_clips_activation():
    b32 = resolve_architecture("ViT-B-32")
    assert b32 == replace(
        cliplab.get_config("ViT-B/32"), quick_gelu=False
    )  # open_clip's ViT-B-32: exact GELU
    assert resolve_architecture("ViT-B-32-quickgelu") == cliplab.get_config("ViT-B/32")
    # the five ResNet names exist in both tables: cliplab's are OpenAI's, open_clip's use exact GELU
    assert resolve_architecture("RN50").quick_gelu is True
    assert resolve_architecture("RN50", open_clip_first=True).quick_gelu is False
    big_g = resolve_architecture("ViT-bigG-14")
    assert (big_g.vision.width, big_g.vision.heads, big_g.vision.mlp_ratio) == (1664, 16, 4.9231)
    assert (big_g.text.width, big_g.text.heads, big_g.embed_dim) == (1280, 20, 1280)
    h14 = resolve_architecture("ViT-H-14")
    assert (h14.vision.heads, h14.vision.width // h14.vision.heads) == (16, 80)


def test_list_models_and_list_pretrained():
    models = cliplab.list_models()
    assert {"ViT-B-32", "ViT-H-14", "ViT-g-14", "ViT-bigG-14", "RN50-quickgelu", "ViT-B-16-plus-240"} <= set(
        models
    )
    assert "convnext_base" not in models and "ViT-SO400M-14-SigLIP" not in models
    pairs = cliplab.list_pretrained()
    assert ("ViT-B-32", "laion2b_s34b_b79k") in pairs and ("ViT-bigG-14", "laion2b_s39b_b160k") in pairs
    assert all(name in models for name, _ in pairs)
    everything = cliplab.list_pretrained(include_unsupported=True)
    assert len(everything) == 196 and set(pairs) < set(everything)
    assert "ViT-B-32:laion2b_s34b_b79k" in cliplab.list_pretrained(as_str=True)


def test_every_unsupported_open_clip_model_is_refused_with_its_reason():
    supported = set(cliplab.list_models())
    for name in open_clip_model_cfgs():
        if name in supported:
            continue
        with pytest.raises(UnsupportedModelError) as err:
            resolve_architecture(name)
        message = str(err.value)
        assert name in message and "does not implement" in message and "\n" not in message


def test_tags_resolve_to_published_locations_and_checksums():
    entry = pretrained_entry("ViT-B-32", "LAION2B-S34B-B79K")  # open_clip's tag normalisation
    assert entry["hf_hub"] == "laion/CLIP-ViT-B-32-laion2B-s34B-b79K/"
    openai = pretrained_entry("RN50", "openai")
    from cliplab.checkpoints.download import _MODELS

    assert openai["url"] == _MODELS["RN50"] and openai["sha256"] == _MODELS["RN50"].split("/")[-2]
    assert pretrained_entry("RN50", "yfcc15m")["sha256"] == "455df137"  # open_clip's release-file prefix
    with pytest.raises(
        CheckpointError, match="unknown pretrained tag 'nope' for ViT-B-32; its tags are: openai"
    ):
        pretrained_entry("ViT-B-32", "nope")


def test_weights_trained_with_quickgelu_get_quickgelu():
    config, pre = pretrained_config("ViT-B-32", "metaclip_400m")  # open_clip's table marks quick_gelu
    assert config.quick_gelu is True
    config, pre = pretrained_config("ViT-B-32", "laion2b_s34b_b79k")
    assert config.quick_gelu is False and pre.image_size == 224 and pre.resize_mode == "shortest"


# --- create_model_and_transforms ------------------------------------------------------------------


def test_create_model_and_transforms_without_weights():
    model, train, evaluate = cliplab.create_model_and_transforms("ViT-S-32")
    assert model.training  # as open_clip returns it
    assert model.config == resolve_architecture("ViT-S-32")
    assert isinstance(train, TrainTransform) and isinstance(evaluate, EvalTransform)
    assert train.crop_scale == (0.9, 1.0) and evaluate.cfg.image_size == 224


def _micro_tag(monkeypatch, **entry) -> None:
    """A pretrained tag "test" for the micro architecture (real table lookups, small weights)."""
    table = {**pretrained._pretrained(), "micro": {"test": {"mean": [0.5] * 3, "std": [0.25] * 3, **entry}}}
    monkeypatch.setattr(pretrained, "_pretrained", lambda: table)


def test_pretrained_tag_from_the_hub_cache(offline_hub, tmp_path, monkeypatch):  # noqa: F811
    model = random_model("micro")
    export = export_open_clip(model, tmp_path / "e")
    fake_hub_repo(
        offline_hub,
        "org/micro-weights",
        {"open_clip_model.safetensors": export / "open_clip_model.safetensors"},
    )
    _micro_tag(monkeypatch, hf_hub="org/micro-weights/")
    loaded, _, preprocess = cliplab.create_model_and_transforms("micro", pretrained="test", precision="fp32")
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    assert preprocess.cfg.mean == (0.5, 0.5, 0.5) and preprocess.cfg.std == (0.25, 0.25, 0.25)


def test_pretrained_tag_not_cached_offline_names_the_file(offline_hub, monkeypatch):  # noqa: F811
    _micro_tag(monkeypatch, hf_hub="org/not-here/")
    with pytest.raises(CheckpointError) as err:
        cliplab.create_model_and_transforms("micro", pretrained="test")
    assert "https://huggingface.co/org/not-here/resolve/main/open_clip_model.safetensors" in str(err.value)


class _Response(io.BytesIO):
    headers: dict = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_pretrained_url_is_checked_against_its_published_checksum_prefix(tmp_path, monkeypatch):
    model = random_model("micro")
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    data = (tmp_path / "weights.pt").read_bytes()
    prefix = hashlib.sha256(data).hexdigest()[:8]
    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout=None: _Response(data))
    _micro_tag(monkeypatch, url=f"https://example.invalid/micro-test-{prefix}.pt", sha256=prefix)
    loaded, _, _ = cliplab.create_model_and_transforms(
        "micro", pretrained="test", cache_dir=tmp_path / "cache"
    )
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    # a file whose checksum does not start with the published prefix is refused and not kept
    _micro_tag(monkeypatch, url="https://example.invalid/micro-bad-00000000.pt", sha256="00000000")
    with pytest.raises(CheckpointError, match="SHA256"):
        cliplab.create_model_and_transforms("micro", pretrained="test", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "micro-bad-00000000.pt").exists()


def test_pretrained_url_offline_says_which_file_to_pass(tmp_path, monkeypatch):
    def offline(url, timeout=None):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    _micro_tag(monkeypatch, url="https://example.invalid/micro-test-12345678.pt", sha256="12345678")
    with pytest.raises(CheckpointError) as err:
        cliplab.create_model_and_transforms("micro", pretrained="test", cache_dir=tmp_path)
    assert "https://example.invalid/micro-test-12345678.pt" in str(err.value)
    assert "pass its local path" in str(err.value)


def test_pretrained_local_file_uses_the_names_architecture(tmp_path):
    model = random_model("micro")
    torch.save(model.state_dict(), tmp_path / "plain.pt")  # a bare state dict records no activation
    gelu = replace(cliplab.get_config("micro"), quick_gelu=False)
    loaded, _, _ = cliplab.create_model_and_transforms("micro", pretrained=tmp_path / "plain.pt")
    assert loaded.config == cliplab.get_config("micro")
    loaded, _ = load_checkpoint(tmp_path / "plain.pt", config=gelu)
    assert loaded.config.quick_gelu is False


def test_precision_and_hub_arguments_are_checked(offline_hub):  # noqa: F811
    with pytest.raises(cliplab.errors.UsageError, match="precision"):
        cliplab.create_model_and_transforms("micro", precision="fp64")
    with pytest.raises(cliplab.errors.UsageError, match="pretrained=None"):
        cliplab.create_model_and_transforms("hf-hub:org/m", pretrained="x")
    model, _, _ = cliplab.create_model_and_transforms("micro", precision="bf16")
    assert model.dtype == torch.bfloat16


def test_unknown_and_unsupported_names():
    with pytest.raises(UnknownConfigError, match="neither a cliplab config"):
        cliplab.create_model_and_transforms("ViT-Z-99")
    with pytest.raises(UnsupportedModelError, match="timm_model_name='convnext_base'"):
        cliplab.create_model_and_transforms("convnext_base", pretrained="laion400m_s13b_b51k")
    with pytest.raises(UnsupportedModelError, match="hf_model_name='roberta-base'"):
        cliplab.create_model("roberta-ViT-B-32")


# --- get_tokenizer --------------------------------------------------------------------------------


def test_get_tokenizer_context_length_and_truncation():
    tok = cliplab.get_tokenizer("ViT-B-32")
    assert tok.context_length == 77
    ids = tok(["a photo of a dog"])
    assert torch.equal(ids, cliplab.tokenize(["a photo of a dog"]))
    micro = cliplab.get_tokenizer("micro")
    long = micro(["word " * 100])  # open_clip truncates instead of refusing
    assert long.shape == (1, 32) and long[0, -1].item() == 49407
    assert tok.decode(tok.encode("a photo of a dog")).strip() == "a photo of a dog"
    assert cliplab.get_tokenizer("micro", context_length=8)("a b c").shape == (1, 8)


def test_get_tokenizer_for_a_hub_model_reads_its_config(offline_hub, tmp_path):  # noqa: F811
    export = export_open_clip(random_model("micro"), tmp_path / "e")
    fake_hub_repo(offline_hub, "org/tok", directory_files(export))
    assert cliplab.get_tokenizer("hf-hub:org/tok").context_length == 32


# --- open_clip configurations cliplab must not load -----------------------------------------------

BASE_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 64},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("vision_cfg", "global_average_pool", True),
        ("vision_cfg", "pool_type", "avg"),
        ("vision_cfg", "final_ln_after_pool", True),
        ("vision_cfg", "attentional_pool", True),
        ("vision_cfg", "no_ln_pre", True),
        ("vision_cfg", "ls_init_value", 1e-4),
        ("vision_cfg", "norm_kwargs", {"eps": 1e-6}),
        ("vision_cfg", "pos_embed_type", "sin_cos_2d"),
        ("vision_cfg", "qk_norm", True),
        ("vision_cfg", "something_new", 1),
        ("text_cfg", "pool_type", "last"),
        ("text_cfg", "final_ln_after_pool", True),
        ("text_cfg", "no_causal_mask", True),
        ("text_cfg", "proj_bias", True),
        ("text_cfg", "hf_tokenizer_name", "bert-base-uncased"),
        ("text_cfg", "act_kwargs", {"approximate": "tanh"}),
        ("", "init_logit_bias", -10),
    ],
)
def test_configs_that_pool_or_normalise_differently_are_refused(section, key, value):
    cfg = json.loads(json.dumps(BASE_CFG))
    (cfg[section] if section else cfg)[key] = value
    with pytest.raises(CheckpointError, match=key) as err:
        config_from_model_cfg(cfg, "open_clip_config.json")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("vision_cfg", "patch_dropout", 0.5),  # training only
        ("vision_cfg", "pool_type", "tok"),
        ("vision_cfg", "global_average_pool", False),
        ("vision_cfg", "block_type", "default"),
        ("text_cfg", "pad_id", 1),  # argmax pooling under a causal mask never sees padding
        ("text_cfg", "pool_type", "argmax"),
        ("", "custom_text", True),
    ],
)
def test_neutral_settings_are_accepted(section, key, value):
    cfg = json.loads(json.dumps(BASE_CFG))
    (cfg[section] if section else cfg)[key] = value
    assert config_from_model_cfg(cfg, "x") == config_from_model_cfg(BASE_CFG, "x")


def test_mlp_ratio_and_head_width_are_read():
    cfg = json.loads(json.dumps(BASE_CFG))
    cfg["vision_cfg"].update(mlp_ratio=4.3637, head_width=16)
    cfg["text_cfg"]["mlp_ratio"] = 2.0
    config = config_from_model_cfg(cfg, "x")
    assert (config.vision.mlp_ratio, config.vision.heads, config.text.mlp_ratio) == (4.3637, 4, 2.0)
    model = cliplab.create_model(config)
    assert (
        model.visual.transformer.resblocks[0].mlp.c_fc.out_features == 279
    )  # int(64 * 4.3637), as open_clip
    assert model.transformer.resblocks[0].mlp.c_fc.out_features == 128
    # the ratio is inferred back from the weights of a bare state dict
    inferred = cliplab.models.infer_config(model.state_dict(), quick_gelu=True)
    assert cliplab.create_model(inferred).visual.transformer.resblocks[0].mlp.c_fc.out_features == 279
    # open_clip truncates: 96 x 4.9231 = 472.6 is 472 wide, and every hidden width is recovered
    assert mlp_width(96, 4.9231) == 472
    for width in range(8, 400, 7):
        for hidden in range(width, 9 * width, 13):
            assert (
                mlp_width(width, cliplab.models.config._mlp_ratio({"k": torch.empty(hidden, 0)}, "k", width))
                == hidden
            )
