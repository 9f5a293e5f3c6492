"""Model contracts over the whole registry, and parity with OpenAI's reference model code."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from reference import load_reference

from cliplab.models import CLIP, CLIPConfig, VisionConfig, build_model, get_config, infer_config, list_configs

SMALL = ["micro", "tiny", "tiny-rn"]
EOT = 49407
# Released models bigger than their family's base (RN50, ViT-B/32), which shares every code path
# with them: 5-30 s each on a 2-core CPU, so they run in the full suite, not under -m "not slow".
SLOW_PARITY = {"RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px"}


def random_tokens(n: int, context: int, seed: int = 0) -> torch.Tensor:
    """Rows shaped like tokenizer output: SOT, ids, EOT at varying positions, zero padding."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(n, context, dtype=torch.long)
    for i in range(n):
        length = int(torch.randint(2, context + 1, (1,), generator=g))
        tokens[i, 0] = 49406
        tokens[i, 1 : length - 1] = torch.randint(1, 49405, (length - 2,), generator=g)
        tokens[i, length - 1] = EOT
    return tokens


def perturb_(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter and BatchNorm statistic non-trivial random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=g) * 0.02
            if name.endswith("running_var"):
                t.copy_(1.0 + noise.abs() * 10)
            elif name.endswith("logit_scale"):
                continue
            else:
                t.add_(noise)


def reference_model(config: CLIPConfig):
    ref = load_reference("model")
    v, t = config.vision, config.text
    return ref.CLIP(
        config.embed_dim,
        v.image_size,
        v.layers,
        v.width,
        v.patch_size if v.kind == "vit" else None,
        t.context_length,
        t.vocab_size,
        t.width,
        t.heads,
        t.layers,
    )


@pytest.mark.parametrize("name", list_configs())
def test_config_json_round_trip(name):
    cfg = get_config(name)
    again = CLIPConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg


def test_unknown_config_key_is_an_error():
    with pytest.raises(ValueError, match="vision.*patch"):
        CLIPConfig.from_dict({"vision": {"patch": 16}})
    with pytest.raises(KeyError, match="available"):
        get_config("ViT-Z/99")


@pytest.mark.parametrize("name", list_configs())
def test_infer_config_from_weights(name):
    cfg = get_config(name)
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = CLIP(cfg)
    # Which stem convolution downsamples changes no weight's shape: a config says it, weights cannot.
    openai_stem = replace(cfg, vision=replace(cfg.vision, stem_stride_conv=1))
    assert infer_config(model.state_dict()) == openai_stem


@pytest.mark.parametrize("at", [1, 2, 3])
def test_resnet_stem_stride_conv(at):
    """The stem convolution that halves the resolution; the rest of the tower is unchanged."""
    base = get_config("tiny-rn")
    cfg = replace(base, vision=replace(base.vision, stem_stride_conv=at))
    assert CLIPConfig.from_dict(json.loads(cfg.to_json())) == cfg
    assert ("stem_stride_conv" in cfg.to_dict()["vision"]) == (at != 1)  # OpenAI's stem is left out
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    visual = model.visual
    assert [c.stride for c in (visual.conv1, visual.conv2, visual.conv3)] == [
        (2, 2) if i == at else (1, 1) for i in (1, 2, 3)
    ]
    seen = []
    visual.avgpool.register_forward_hook(lambda m, i, o: seen.append((i[0].shape[-1], o.shape[-1])))
    size = cfg.vision.image_size
    with torch.no_grad():
        out = model.encode_image(torch.randn(2, 3, size, size))
    assert out.shape == (2, cfg.embed_dim) and seen == [(size // 2, size // 4)]
    reference = build_model(base)
    reference.load_state_dict(model.state_dict())  # same weights, OpenAI's stem: a different function
    with torch.no_grad():
        differs = not torch.allclose(reference.eval().encode_image(torch.ones(1, 3, size, size)),
                                     model.encode_image(torch.ones(1, 3, size, size)))  # fmt: skip
    assert differs == (at != 1)


@pytest.mark.parametrize("value", [0, 4, True, "2"])
def test_bad_stem_stride_conv_is_an_error(value):
    with pytest.raises(ValueError, match="stem_stride_conv"):
        VisionConfig(
            kind="resnet", image_size=32, layers=(1, 1, 1, 1), width=8, heads=2, stem_stride_conv=value
        )
    with pytest.raises(ValueError, match="ResNets only"):
        VisionConfig(stem_stride_conv=2)


@pytest.mark.parametrize("name", SMALL)
def test_forward_backward_contract(name):
    torch.manual_seed(0)
    model = build_model(get_config(name))
    size, ctx = model.config.vision.image_size, model.config.text.context_length
    images, tokens = torch.randn(3, 3, size, size), random_tokens(3, ctx)
    logits_i, logits_t = model(images, tokens)
    assert logits_i.shape == (3, 3) and torch.equal(logits_i.t(), logits_t)
    assert torch.isfinite(logits_i).all()
    loss = logits_i.logsumexp(1).mean() - logits_i.diag().mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing}"


@pytest.mark.parametrize("name", ["micro", "tiny"])
def test_grad_checkpointing_is_equivalent(name):
    torch.manual_seed(0)
    model = build_model(get_config(name))
    size, ctx = model.config.vision.image_size, model.config.text.context_length
    images, tokens = torch.randn(2, 3, size, size), random_tokens(2, ctx)

    def grads():
        model.zero_grad()
        model(images, tokens)[0].sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    model.set_grad_checkpointing(True)
    checkpointed = grads()
    for n in plain:
        torch.testing.assert_close(checkpointed[n], plain[n], rtol=0, atol=1e-6, msg=n)


@pytest.mark.parametrize("name", ["micro", "ViT-B/32"])
def test_text_truncation_is_lossless(name):
    torch.manual_seed(0)
    model = build_model(get_config(name)).eval()
    ctx = model.config.text.context_length
    tokens = random_tokens(6, min(ctx, 20), seed=1)
    tokens = torch.cat([tokens, torch.zeros(6, ctx - tokens.shape[1], dtype=torch.long)], 1)
    with torch.no_grad():
        fast = model.encode_text(tokens)
        full = model.encode_text(tokens, full_length=True)
    assert (fast - full).abs().max() <= 1e-5


def _text_grads(model: CLIP, tokens: torch.Tensor, full_length: bool) -> dict[str, torch.Tensor]:
    model.zero_grad()
    out = model.encode_text(tokens, full_length=full_length)
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_packed_text_equals_padded_forward_and_backward(checkpointing):
    """The default path packs each row's real tokens (no padding through the linear layers, only
    end-of-text tokens in the last layer); full_length=True is the plain padded computation."""
    torch.manual_seed(0)
    model = build_model(get_config("micro")).double()
    model.set_grad_checkpointing(checkpointing)
    ctx = model.config.text.context_length
    tokens = random_tokens(7, ctx, seed=3)
    tokens[0] = 0
    tokens[0, :2] = torch.tensor([49406, EOT])  # shortest possible row: start and end only
    tokens[1] = 0
    tokens[1, 0], tokens[1, 1 : ctx - 1], tokens[1, ctx - 1] = 49406, 400, EOT  # a full-length row
    assert len(set((tokens.argmax(-1)).tolist())) >= 5  # rows of many lengths
    packed = model.encode_text(tokens)
    padded = model.encode_text(tokens, full_length=True)
    assert (packed - padded).abs().max() <= 1e-12
    got, want = _text_grads(model, tokens, False), _text_grads(model, tokens, True)
    assert got.keys() == want.keys() and "positional_embedding" in got
    for n in want:  # LayerNorm runs in float32 (cliplab's LayerNorm), hence not 1e-12 here
        torch.testing.assert_close(got[n], want[n], rtol=1e-6, atol=1e-6)
    for rows in (tokens[:1], tokens[1:2]):  # one row; all rows of one length
        assert (model.encode_text(rows) - model.encode_text(rows, full_length=True)).abs().max() <= 1e-12


def test_packed_text_gradients_are_reproducible():
    """Two backward passes give bit-identical gradients on a multi-threaded CPU (training runs are
    reproducible): no parameter's gradient is accumulated in a thread-dependent order."""
    torch.manual_seed(0)
    model = build_model(get_config("micro"))
    tokens = random_tokens(64, model.config.text.context_length, seed=4)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first, second = _text_grads(model, tokens, False), _text_grads(model, tokens, False)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(first[n], second[n]) for n in first)


def test_text_longer_than_context_is_a_clear_error():
    model = build_model(get_config("micro"))
    tokens = torch.full((1, 40), 320)
    tokens[0, 0], tokens[0, -1] = 49406, EOT
    with pytest.raises(ValueError, match="context_length"):
        model.encode_text(tokens)


def test_short_context_model_accepts_77_token_input():
    """Tokenizer default 77 positions work as long as the text fits the model's context."""
    model = build_model(get_config("micro")).eval()
    tokens = torch.cat([random_tokens(2, 10), torch.zeros(2, 67, dtype=torch.long)], 1)
    with torch.no_grad():
        assert torch.equal(model.encode_text(tokens), model.encode_text(tokens[:, :32]))


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_PARITY else n for n in list_configs()]
)
def test_parity_with_openai_reference(name):
    """Same random weights in OpenAI's model.py and ours: same embeddings and logits (float32)."""
    cfg = get_config(name)
    torch.manual_seed(0)
    ref = reference_model(cfg).float().eval()
    if cfg.vision.kind == "resnet" and cfg.vision.stem_stride_conv != 1:
        # OpenAI's code has no setting for it: move the stride in its stem the same way
        for i, conv in enumerate((ref.visual.conv1, ref.visual.conv2, ref.visual.conv3), start=1):
            conv.stride = (2, 2) if i == cfg.vision.stem_stride_conv else (1, 1)
    perturb_(ref)
    ours = CLIP(cfg).eval()
    ours.load_state_dict(ref.state_dict())
    g = torch.Generator().manual_seed(0)
    images = torch.randn(
        1 if cfg.text.width > 512 else 2, 3, cfg.vision.image_size, cfg.vision.image_size, generator=g
    )
    tokens = random_tokens(3, cfg.text.context_length, seed=2)
    with torch.no_grad():
        for a, b in [
            (ours.encode_image(images, normalize=True), ref.encode_image(images)),
            (ours.encode_text(tokens, normalize=True), ref.encode_text(tokens)),
        ]:
            b = b / b.norm(dim=-1, keepdim=True)
            assert (a - b).abs().max() <= 1e-4
        ours_logits, ref_logits = ours(images, tokens)[0], ref(images, tokens)[0]
    assert (ours_logits - ref_logits).abs().max() <= 1e-4 * ref.logit_scale.exp()
