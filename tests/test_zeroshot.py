"""Zero-shot classifier construction and the prompt data shipped with cliplab."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from cliplab.models import build_model, get_config
from cliplab.tokenizer import tokenize
from cliplab.zeroshot import (
    available_prompt_sets,
    build_zero_shot_classifier,
    class_prompts,
    format_prompt,
    imagenet_classnames,
    imagenet_templates,
    load_classnames,
    load_prompt_set,
    load_templates,
    zero_shot_logits,
)


@pytest.fixture(scope="module")
def micro():
    torch.manual_seed(0)
    return build_model(get_config("micro")).eval()


def _slow_classifier(model, classnames, per_class_prompts):
    """The definition, one prompt at a time: normalise each, average per class, renormalise."""
    ctx = model.config.text.context_length
    columns = []
    with torch.no_grad():
        for prompts in per_class_prompts:
            embs = [
                F.normalize(model.encode_text(tokenize([p], context_length=ctx, truncate=True))[0], dim=0)
                for p in prompts
            ]
            columns.append(F.normalize(torch.stack(embs).mean(0), dim=0))
    return torch.stack(columns, dim=1)


def test_classifier_matches_definition(micro):
    names = ["dog", "cat", "red car", "a very long class name " * 6]  # the last one needs truncation
    templates = ["a photo of a {}.", "a drawing of the {c}.", lambda c: f"itap of a {c}"]
    fast = build_zero_shot_classifier(micro, tokenize, names, templates, batch_size=5, progress=False)
    expected_prompts = [[f"a photo of a {n}.", f"a drawing of the {n}.", f"itap of a {n}"] for n in names]
    slow = _slow_classifier(micro, names, expected_prompts)
    assert fast.shape == (micro.config.embed_dim, len(names))
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.norm(dim=0), torch.ones(len(names)))


def test_batch_size_does_not_change_weights(micro):
    names = [f"class {i}" for i in range(7)]
    a = build_zero_shot_classifier(micro, tokenize, names, ["a {}.", "the {}!"], batch_size=1, progress=False)
    b = build_zero_shot_classifier(
        micro, tokenize, names, ["a {}.", "the {}!"], batch_size=256, progress=False
    )
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_per_class_prompt_lists(micro):
    mapping = {"dog": ["a furry pet that barks", "a dog"], "cat": ["a small feline"]}
    only_listed = build_zero_shot_classifier(micro, tokenize, mapping, [], progress=False)
    torch.testing.assert_close(
        only_listed, _slow_classifier(micro, list(mapping), list(mapping.values())), atol=1e-5, rtol=0
    )
    # Templates add to the listed prompts.
    assert class_prompts(mapping, ["a photo of a {}."]) == [
        ["a furry pet that barks", "a dog", "a photo of a dog."],
        ["a small feline", "a photo of a cat."],
    ]
    with pytest.raises(TypeError, match="'dog'"):
        class_prompts({"dog": "a dog"}, [])
    with pytest.raises(ValueError, match="no prompts"):
        class_prompts({"dog": []}, [])


def test_model_mode_restored(micro):
    micro.train()
    build_zero_shot_classifier(micro, tokenize, ["a"], ["{}"], progress=False)
    assert micro.training
    micro.eval()


class ModelElsewhere(torch.nn.Module):
    """A stand-in CLIP whose parameters live on the 'meta' device, as a CUDA model's live on 'cuda'.

    It records the device of every batch it is given and answers with random CPU features. An
    entry point that follows the model's device sends its inputs to 'meta'; one that defaults to
    'cpu' (this machine has no GPU to tell the two apart otherwise) sends them to the CPU.
    """

    def __init__(self):
        super().__init__()
        self.config = get_config("micro")
        self.context_length = self.config.text.context_length
        self.weight = torch.nn.Parameter(torch.empty(self.config.embed_dim, device="meta"))
        self.seen: list[tuple[str, torch.device]] = []

    def encode_image(self, images, normalize=False):
        self.seen.append(("image", images.device))
        return F.normalize(torch.randn(images.shape[0], self.config.embed_dim), dim=-1)

    def encode_text(self, tokens, normalize=False):
        self.seen.append(("text", tokens.device))
        return F.normalize(torch.randn(tokens.shape[0], self.config.embed_dim), dim=-1)


def test_classifier_features_and_zero_shot_evaluation_default_to_the_model_device():
    from PIL import Image

    from cliplab.evaluation import InMemoryDataset, evaluate_zero_shot, extract_image_features
    from cliplab.transforms import image_transform

    meta = torch.device("meta")
    model = ModelElsewhere()
    build_zero_shot_classifier(model, tokenize, ["dog", "cat"], ["a {}."], progress=False)
    assert model.seen == [("text", meta)]

    images = [Image.new("RGB", (32, 32), (40 * i, 0, 0)) for i in range(4)]
    dataset = InMemoryDataset(images, [0, 1, 0, 1], ["dog", "cat"], image_transform(32))
    model.seen.clear()
    extract_image_features(model, dataset, workers=0, progress=False)
    assert model.seen == [("image", meta)]

    model.seen.clear()
    result = evaluate_zero_shot(model, tokenize, dataset, None, ["a {}."], workers=0, progress=False)
    assert result["n_images"] == 4
    assert {kind for kind, _ in model.seen} == {"image", "text"}
    assert {device for _, device in model.seen} == {meta}

    model.seen.clear()  # an explicit device still wins
    evaluate_zero_shot(model, tokenize, dataset, None, ["a {}."], workers=0, device="cpu", progress=False)
    assert {device for _, device in model.seen} == {torch.device("cpu")}


def test_format_prompt():
    assert format_prompt("a photo of a {}.", "dog") == "a photo of a dog."
    assert format_prompt("a {c} and {c}", "cat") == "a cat and cat"
    assert format_prompt('json {"k": 1} {}', "x") == 'json {"k": 1} x'  # other braces untouched
    with pytest.raises(ValueError, match="placeholder"):
        format_prompt("a photo", "dog")


def test_zero_shot_logits_scale():
    feats = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    w = torch.eye(2)
    torch.testing.assert_close(zero_shot_logits(feats, w, 10.0), torch.tensor([[10.0, 0.0], [0.0, 10.0]]))


def test_shipped_imagenet_lists():
    names, templates = imagenet_classnames(), imagenet_templates()
    assert len(names) == 1000 and len(templates) == 80
    assert names[0] == "tench" and names[-1] == "toilet paper"
    assert templates[0] == "a bad photo of a {}."
    assert all("{}" in t for t in templates) and len(set(templates)) == 80
    # OpenAI's curated list repeats exactly two names; kept as published.
    assert sorted({n for n in names if names.count(n) > 1}) == ["missile", "sunglasses"]


def test_shipped_dataset_sets():
    sets = available_prompt_sets()
    for name in (
        "cifar10",
        "cifar100",
        "food101",
        "eurosat",
        "pets",
        "flowers",
        "gtsrb",
        "country211",
        "sun397",
    ):
        assert name in sets
    assert len(load_prompt_set("cifar10").templates) == 18
    assert len(load_prompt_set("eurosat").classnames) == 10
    sizes = [len(load_prompt_set(n).classnames) for n in ("cifar10", "cifar100", "food101", "dtd")]
    assert sizes == [10, 100, 101, 47]
    assert len(load_prompt_set("Oxford-Pets").classnames) == 37  # alias and punctuation
    assert load_prompt_set("imagenet").name == "imagenet1k"
    for name in sets:
        s = load_prompt_set(name)
        assert s.templates and all("{}" in t for t in s.templates), name
        assert s.source
    with pytest.raises(KeyError, match="available"):
        load_prompt_set("no-such-dataset")


def test_prompt_set_is_a_copy():
    load_prompt_set("cifar10").templates.append("mutated {}")
    assert "mutated {}" not in load_prompt_set("cifar10").templates


def test_user_files(tmp_path):
    txt = tmp_path / "t.txt"
    txt.write_text("# my prompts\na photo of a {}.\n\nart of the {c}\n")
    assert load_templates(txt) == ["a photo of a {}.", "art of the {c}"]
    js = tmp_path / "t.json"
    js.write_text(json.dumps({"templates": ["x {}"]}))
    assert load_templates(js) == ["x {}"]
    bad = tmp_path / "bad.txt"
    bad.write_text("no placeholder here\n")
    with pytest.raises(ValueError, match=r"bad.txt: template 1"):
        load_templates(bad)
    with pytest.raises(ValueError, match="neither an existing file nor a shipped"):
        load_templates("nonexistent-set")
    assert load_templates("cifar10")[0] == "a photo of a {}."

    names = tmp_path / "names.txt"
    names.write_text("dog\ncat\n")
    assert load_classnames(names) == ["dog", "cat"]
    per_class = tmp_path / "prompts.json"
    per_class.write_text(json.dumps({"dog": ["a dog"], "cat": ["a cat", "kitty"]}))
    assert load_classnames(per_class) == {"dog": ["a dog"], "cat": ["a cat", "kitty"]}
    per_class.write_text(json.dumps({"dog": "a dog"}))
    with pytest.raises(ValueError, match="'dog' must map to a non-empty list"):
        load_classnames(per_class)
    broken = tmp_path / "broken.json"
    broken.write_text('["a",\n')
    with pytest.raises(ValueError, match=r"broken.json:\d+: invalid JSON"):
        load_classnames(broken)
    assert len(load_classnames("imagenet")) == 1000
    with pytest.raises(ValueError, match="no class names"):
        load_classnames("sun397")  # shipped with templates only
