"""Shared-prefix prompt encoding against the plain per-prompt ``encode_text``.

``build_zero_shot_classifier`` runs the tokens that a template's prompts share once and encodes only
the rest of each prompt against their cached keys and values (``CLIP.encode_text_prefixes`` and
``CLIP.encode_text_after_prefix``). These tests hold it to the obvious path: every prompt encoded on
its own, normalised, averaged per class, within 1e-5.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from cliplab.models import build_model, get_config
from cliplab.models.clip import CLIP
from cliplab.tokenizer import tokenize
from cliplab.zeroshot import build_zero_shot_classifier, class_prompts
from cliplab.zeroshot import classifier as classifier_module
from cliplab.zeroshot.classifier import prompt_features

ATOL = 1e-5


@pytest.fixture(scope="module")
def model():
    """A small text tower with OpenAI's 77-token context, several heads and layers, random weights."""
    base = get_config("micro")
    text = dataclasses.replace(base.text, context_length=77, heads=4, layers=3)
    torch.manual_seed(0)
    return build_model(dataclasses.replace(base, text=text)).eval()


def per_prompt_classifier(model, classnames, templates):
    """The definition: each prompt encoded alone, normalised, averaged per class, renormalised."""
    columns = []
    with torch.no_grad():
        for prompts in class_prompts(classnames, templates):
            tokens = tokenize(prompts, context_length=model.context_length, truncate=True)
            embs = torch.cat([F.normalize(model.encode_text(t[None]), dim=-1) for t in tokens])
            columns.append(F.normalize(embs.mean(0), dim=0))
    return torch.stack(columns, dim=1)


def assert_matches_definition(model, classnames, templates, **kwargs):
    fast = build_zero_shot_classifier(model, tokenize, classnames, templates, progress=False, **kwargs)
    slow = per_prompt_classifier(model, classnames, templates)
    assert fast.shape == slow.shape
    assert (fast - slow).abs().max() <= ATOL


NAMES = ["dog", "cat", "red fox", "great white shark", "a b c", "T-shirt", "missile", "missile"]
TEMPLATES = [
    "a photo of a {}.",
    "a bad photo of the {}.",
    "{} in the wild.",  # the class name first: only the start token is shared
    "itap of a {c}",
    lambda c: f"a drawing of a {c}, a kind of thing.",  # a callable template
    "a {}-like object",  # no space before the placeholder's end
]


@pytest.mark.parametrize("batch_size", [1, 3, 7, 256])
def test_classifier_matches_per_prompt_encoding(model, batch_size):
    # Small batch sizes put batch boundaries inside templates and inside classes.
    assert_matches_definition(model, NAMES, TEMPLATES, batch_size=batch_size)


def test_truncated_prompts(model):
    # Over 77 tokens: truncated with the end token put last; two classes share the whole kept part.
    long_names = ["word " * 90, "word " * 95, "short"]
    assert_matches_definition(model, long_names, ["a photo of a {}.", "{} again"], batch_size=2)


def test_per_class_prompt_mapping(model):
    mapping = {
        "dog": ["a furry pet that barks", "a dog", "a photo of a dog"],
        "cat": ["a small feline"],
        "fox": ["a photo of a fox", "a fox " * 40],
    }
    assert_matches_definition(model, mapping, [], batch_size=2)
    assert_matches_definition(model, mapping, ["a photo of a {}.", "{}!"], batch_size=4)


def test_many_prefix_caches(model, monkeypatch):
    # More template groups than one cache holds: the prefixes are cached in several runs.
    monkeypatch.setattr(classifier_module, "_GROUPS_PER_CACHE", 2)
    assert_matches_definition(model, NAMES[:4], TEMPLATES, batch_size=5)


def test_tokenizer_without_shared_start(model):
    # A tokenizer whose rows share no first token gives empty prefixes; still exact.
    def shifted(texts, context_length, truncate):
        ids = tokenize(texts, context_length=context_length, truncate=truncate)
        ids[:, 0] = torch.arange(len(texts)) + 100
        return ids

    names, templates = ["dog", "cat", "bird"], ["a photo of a {}.", "{} here"]
    fast = build_zero_shot_classifier(model, shifted, names, templates, batch_size=2, progress=False)
    plain = build_zero_shot_classifier(
        model, shifted, names, templates, batch_size=2, progress=False, share_prefixes=False
    )
    assert (fast - plain).abs().max() <= ATOL


def test_encode_text_after_prefix_equals_encode_text(model):
    tokens = tokenize(["a photo of a dog.", "a photo of a great white shark.", "the cat", "x"], 77)
    lengths = tokens.argmax(-1) + 1
    prefix_lengths = torch.tensor([4, 0, 1, 2])  # per text, at most its length - 1
    prefix_rows = torch.stack([tokens[i, :4] * (torch.arange(4) < n) for i, n in enumerate(prefix_lengths)])
    with torch.no_grad():
        cache = model.encode_text_prefixes(prefix_rows, prefix_lengths)
        order = torch.tensor([1, 0, 3, 2])  # texts need not be in prefix order
        n = lengths[order] - prefix_lengths[order]
        columns = prefix_lengths[order][:, None] + torch.arange(int(n.max()))
        suffixes = tokens[order[:, None], columns.clamp(max=76)]
        got = model.encode_text_after_prefix(suffixes, n, order, cache)
        expected = model.encode_text(tokens[order])
    assert (got - expected).abs().max() <= ATOL
    with pytest.raises(ValueError, match="after its prefix"):
        model.encode_text_after_prefix(suffixes, torch.zeros_like(n), order, cache)


def test_other_models_take_the_plain_path(model):
    class Custom(CLIP):
        calls = 0

        def encode_text(self, text, normalize=False, full_length=False):
            Custom.calls += 1
            return super().encode_text(text, normalize, full_length)

    custom = Custom(model.config)
    custom.load_state_dict(model.state_dict())
    custom.eval()
    got = build_zero_shot_classifier(custom, tokenize, NAMES, TEMPLATES, batch_size=4, progress=False)
    assert Custom.calls == -(-len(NAMES) * len(TEMPLATES) // 4)
    assert (got - per_prompt_classifier(model, NAMES, TEMPLATES)).abs().max() <= ATOL


def test_half_precision_model_agrees(model):
    bf16 = build_model(model.config).eval()
    bf16.load_state_dict(model.state_dict())
    bf16 = bf16.to(torch.bfloat16)
    shared = build_zero_shot_classifier(bf16, tokenize, NAMES, TEMPLATES, progress=False)
    plain = build_zero_shot_classifier(bf16, tokenize, NAMES, TEMPLATES, progress=False, share_prefixes=False)
    assert shared.dtype == torch.float32
    assert F.cosine_similarity(shared, plain, dim=0).min() > 0.99


def test_shared_and_pooled_batches_in_one_call(model):
    # batch_size 16: each template's 8 prompts get a batch of their own (one shared prefix, uncopied);
    # the 2 listed prompts form a group under batch_size // 4, pooled (a mixed batch in general).
    names = {name: ([f"a {name} seen up close"] if i < 2 else []) for i, name in enumerate(NAMES[:-1])}
    names["missile silo"] = []
    per_class = class_prompts(names, TEMPLATES)
    tokens = tokenize([p for ps in per_class for p in ps], context_length=77, truncate=True)
    batches = classifier_module._prefix_batches(
        tokens, classifier_module._prompt_groups(per_class, len(TEMPLATES)), 16
    )
    assert sorted(len(b.index) for b in batches) == [2] + [8] * len(TEMPLATES)
    assert all(bool((b.prefix_index == b.prefix_index[0]).all()) for b in batches)
    assert_matches_definition(model, names, TEMPLATES, batch_size=16)


def test_prompt_features_are_each_prompt_encoded_alone(model):
    feats = prompt_features(model, tokenize, NAMES[:3], TEMPLATES, batch_size=4, progress=False)
    prompts = [p for ps in class_prompts(NAMES[:3], TEMPLATES) for p in ps]
    with torch.no_grad():
        alone = F.normalize(model.encode_text(tokenize(prompts, context_length=77, truncate=True)), dim=-1)
    assert feats.shape == alone.shape
    assert (feats - alone).abs().max() <= ATOL


def test_one_shared_prefix_equals_encode_text(model):
    # All texts after one cached prefix: the path whose keys/values are shared, not gathered per row.
    texts = ["a photo of a dog.", "a photo of a great white shark.", "a photo of a T-shirt", "a photo of a x"]
    tokens = tokenize(texts, 77)
    lengths = tokens.argmax(-1) + 1
    with torch.no_grad():
        cache = model.encode_text_prefixes(tokens[:1, :5], torch.tensor([5]))
        n = lengths - 5
        suffixes = tokens[:, 5 : 5 + int(n.max())]
        got = model.encode_text_after_prefix(suffixes, n, torch.zeros(4, dtype=torch.long), cache)
        expected = model.encode_text(tokens)
    assert (got - expected).abs().max() <= ATOL
