"""The contrastive loss against the paper's pseudocode, the temperature clamp, AdamW's weight-decay
groups and the warm-up + cosine learning-rate schedule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import cliplab
from cliplab.training.loss import MAX_LOGIT_SCALE, ClipLoss, clamp_logit_scale_
from cliplab.training.optim import build_optimizer, cosine_lr, param_groups, set_lr

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------
# The loss


def paper_loss(image_e: torch.Tensor, text_e: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Figure 3 of the paper, written out with explicit log-softmax sums (no torch.nn.functional):

    logits = np.dot(I_e, T_e.T) * np.exp(t); labels = np.arange(n)
    loss_i = cross_entropy_loss(logits, labels, axis=0)
    loss_t = cross_entropy_loss(logits, labels, axis=1)
    loss = (loss_i + loss_t) / 2
    """
    n = image_e.shape[0]
    logits = (image_e @ text_e.T) * torch.exp(t)

    def cross_entropy(axis: int) -> torch.Tensor:
        total = 0.0
        for k in range(n):
            row = logits[:, k] if axis == 0 else logits[k, :]
            top = row.max()
            log_sum_exp = top + torch.log(torch.sum(torch.exp(row - top)))
            total = total - (row[k] - log_sum_exp)  # label of row/column k is k
        return total / n

    return (cross_entropy(0) + cross_entropy(1)) / 2


def unit_features(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(n, d, generator=g, dtype=torch.float64)
    # Paired captions correlate with their images, so the loss is far from both 0 and log(n).
    text = image + 0.8 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return image / image.norm(dim=1, keepdim=True), text / text.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("n,d,t", [(8, 16, math.log(1 / 0.07)), (13, 5, 0.3), (1, 4, 2.0), (32, 64, 4.6)])
def test_loss_and_gradients_match_paper_pseudocode(n, d, t):
    image, text = unit_features(n, d, seed=n)
    leaves = [x.clone().requires_grad_(True) for x in (image, text, torch.tensor(t, dtype=torch.float64))]
    refs = [x.clone().requires_grad_(True) for x in (image, text, torch.tensor(t, dtype=torch.float64))]

    loss = ClipLoss()(*leaves)
    expected = paper_loss(*refs)
    assert loss.dtype == torch.float64  # float64 inputs are not silently reduced to float32
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=0)

    loss.backward()
    expected.backward()
    for name, got, ref in zip(("image features", "text features", "logit_scale"), leaves, refs, strict=True):
        torch.testing.assert_close(got.grad, ref.grad, atol=1e-6, rtol=0, msg=f"gradient w.r.t. {name}")
    if 1 < n < 32:  # (at n=32, t=4.6 these pairs are already separated: loss and gradients ~0)
        assert leaves[2].grad.abs() > 1e-3  # the temperature really is learned


def test_loss_gradcheck_and_known_values():
    image, text = unit_features(6, 8, seed=0)
    t = torch.tensor(1.2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        ClipLoss(), (image.requires_grad_(True), text.requires_grad_(True), t), eps=1e-6, atol=1e-6
    )
    # Perfectly matched, orthogonal pairs with a large scale: loss -> 0; identical features: log(n).
    eye = torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(
        ClipLoss()(eye, eye, torch.tensor(math.log(100.0), dtype=torch.float64)),
        torch.tensor(-math.log(1 / (1 + 3 * math.exp(-100.0))), dtype=torch.float64),
    )
    same = torch.ones(5, 3, dtype=torch.float64) / math.sqrt(3)
    torch.testing.assert_close(
        ClipLoss()(same, same, torch.tensor(2.0, dtype=torch.float64)),
        torch.tensor(math.log(5), dtype=torch.float64),
    )


def test_loss_is_symmetric_and_float32_under_low_precision():
    image, text = unit_features(10, 12, seed=3)
    scale = torch.tensor(2.5, dtype=torch.float64)
    torch.testing.assert_close(ClipLoss()(image, text, scale), ClipLoss()(text, image, scale))
    low = ClipLoss()(image.bfloat16(), text.bfloat16(), scale.bfloat16())
    assert low.dtype == torch.float32
    torch.testing.assert_close(low.double(), paper_loss(image, text, scale), atol=0.05, rtol=0)


def test_logit_scale_clamped_at_ln_100():
    p = torch.nn.Parameter(torch.tensor(7.0))
    clamp_logit_scale_(p)
    assert MAX_LOGIT_SCALE == 100.0
    assert abs(p.item() - math.log(100.0)) < 1e-6
    assert abs(p.exp().item() - 100.0) < 1e-4
    p.data.fill_(-0.5)  # a temperature above 1 is clamped too
    clamp_logit_scale_(p)
    assert p.item() == 0.0
    p.data.fill_(math.log(1 / 0.07))  # the paper's initial value is left alone
    clamp_logit_scale_(p)
    assert p.item() == pytest.approx(math.log(1 / 0.07), abs=1e-7)
    model = cliplab.create_model("micro")
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07), abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Weight decay groups

EMBEDDINGS = {
    "micro": [
        "token_embedding.weight",
        "positional_embedding",
        "visual.positional_embedding",
        "visual.class_embedding",
    ],
    "tiny-rn": ["token_embedding.weight", "positional_embedding", "visual.attnpool.positional_embedding"],
}
SOME_MATRICES = {
    "micro": [
        "text_projection",
        "visual.proj",
        "visual.conv1.weight",
        "transformer.resblocks.0.attn.in_proj_weight",
        "visual.transformer.resblocks.1.mlp.c_proj.weight",
        "transformer.resblocks.1.attn.out_proj.weight",
    ],
    "tiny-rn": [
        "text_projection",
        "visual.conv1.weight",
        "visual.layer1.0.downsample.0.weight",
        "visual.attnpool.q_proj.weight",
        "visual.attnpool.c_proj.weight",
    ],
}


GAINS_AND_BIASES = {
    "micro": [
        "ln_final.weight",
        "ln_final.bias",
        "visual.ln_pre.weight",
        "visual.ln_post.bias",
        "transformer.resblocks.0.ln_1.weight",
        "transformer.resblocks.0.attn.in_proj_bias",
        "visual.transformer.resblocks.1.mlp.c_fc.bias",
    ],
    "tiny-rn": [
        "ln_final.weight",
        "visual.bn1.weight",
        "visual.bn1.bias",
        "visual.layer1.0.downsample.1.weight",
        "visual.attnpool.q_proj.bias",
    ],
}


@pytest.mark.parametrize("name", ["micro", "tiny-rn"])
def test_weight_decay_groups_follow_the_paper(name):
    """The paper's "all weights that are not gains or biases", embeddings included; not logit_scale."""
    model = cliplab.create_model(name)
    groups = param_groups(model, weight_decay=0.2)
    ids = {id(p): n for n, p in model.named_parameters()}
    decay = {ids[id(p)] for g in groups if g["weight_decay"] == 0.2 for p in g["params"]}
    no_decay = {ids[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert sum(len(g["params"]) for g in groups) == len(ids), "every parameter in exactly one group"
    assert decay | no_decay == set(ids.values()) and not decay & no_decay

    assert set(EMBEDDINGS[name]) <= decay  # token, positional and class embeddings are weights
    assert set(SOME_MATRICES[name]) <= decay
    assert set(GAINS_AND_BIASES[name]) <= no_decay
    assert "logit_scale" in no_decay  # the documented departure: a clamped scalar temperature
    # Every other tensor: the 1-d ones are gains or biases (the class embedding is the only 1-d
    # weight), everything with two or more dimensions is a weight.
    params = dict(model.named_parameters())
    one_d_weights = {"visual.class_embedding"} & set(params)
    not_decayed = {n for n, p in params.items() if p.ndim < 2} - one_d_weights
    assert no_decay == not_decayed
    assert decay == set(params) - not_decayed


def test_frozen_parameters_are_left_out_of_the_optimizer():
    model = cliplab.create_model("micro")
    for p in model.visual.parameters():
        p.requires_grad_(False)
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in model.parameters() if p.requires_grad}
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6
    set_lr(opt, 3e-4)
    assert all(g["lr"] == 3e-4 for g in opt.param_groups)


# ---------------------------------------------------------------------------------------------
# Schedule


def test_fused_adamw_matches_the_per_parameter_loop():
    """The trainer's optimizer takes torch's fused kernel on CPU; it must do the loop's arithmetic."""
    torch.manual_seed(0)
    model, plain_model = cliplab.create_model("micro"), cliplab.create_model("micro")
    plain_model.load_state_dict(model.state_dict())
    start = {k: v.clone() for k, v in model.state_dict().items()}
    fused = build_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6)
    plain = build_optimizer(plain_model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6, fused=False)
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=g) for p in model.parameters()]
        for m, opt in ((model, fused), (plain_model, plain)):
            for p, grad in zip(m.parameters(), grads, strict=True):
                p.grad = grad.clone()
            opt.step()
    for (name, a), b in zip(model.named_parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        assert not torch.equal(a, start[name]), f"{name} did not move"


def test_cosine_schedule_warmup_and_end_values():
    base, warm, total, floor = 5e-4, 10, 110, 1e-5
    lrs = [cosine_lr(s, base, warm, total, floor) for s in range(total + 5)]
    # linear warm-up from 0: step s uses base * (s + 1) / warm, reaching base at the last warm-up step
    for s in range(warm):
        assert lrs[s] == pytest.approx(base * (s + 1) / warm, rel=1e-12)
    assert lrs[0] < lrs[1] < lrs[warm - 1] == pytest.approx(base)
    assert lrs[warm] == pytest.approx(base)  # the cosine starts at its peak
    assert lrs[warm + (total - warm) // 2] == pytest.approx((base + floor) / 2)  # half way
    assert lrs[total] == pytest.approx(floor)  # the end value ...
    assert all(lr == pytest.approx(floor) for lr in lrs[total:])  # ... held past the end
    decay = lrs[warm : total + 1]
    assert all(a >= b for a, b in itertools.pairwise(decay)), "monotone after warm-up"
    assert min(lrs) >= 0


def test_cosine_schedule_without_warmup():
    assert cosine_lr(0, 1.0, 0, 100) == pytest.approx(1.0)
    assert cosine_lr(100, 1.0, 0, 100) == pytest.approx(0.0, abs=1e-12)
    assert cosine_lr(25, 1.0, 0, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
