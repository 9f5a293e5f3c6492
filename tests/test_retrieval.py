"""Retrieval: recall@k against hand-computed ranks (ties included), chunked == reference, loaders."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from cliplab.data.manifest import ManifestError
from cliplab.evaluation.retrieval import (
    image_to_text_ranks,
    load_captions,
    retrieval_metrics,
    retrieval_metrics_reference,
    text_to_image_ranks,
)

# Three images (I2 duplicates I0) and five captions: I0 has T0 and T3, I1 has T1, I2 has T2 and T4.
# Small integer features make every dot product exact, so ties are real ties.
IMAGES = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
TEXTS = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
OWNERS = torch.tensor([0, 1, 2, 0, 2])
# Worked out by hand from the score tables:
#   text -> image, scores per text over (I0, I1, I2): T0 (1,0,1) own I0; T1 (0,1,0) own I1;
#   T2 (1,0,1) own I2; T3 (1,1,1) own I0; T4 (0,2,0) own I2.
#   image -> text, scores per image over (T0..T4): I0 (1,0,1,1,0) best own 1 (T0/T3);
#   I1 (0,1,0,1,2) own T1 = 1; I2 (1,0,1,1,0) best own 1 (T2).
EXPECTED = {
    # optimistic: gallery items strictly above the best correct one
    "optimistic": {"t2i": [0, 0, 0, 0, 1], "i2t": [0, 1, 0]},
    # pessimistic: incorrect gallery items at or above the best correct one
    "pessimistic": {"t2i": [1, 0, 1, 2, 2], "i2t": [1, 2, 2]},
}


@pytest.mark.parametrize("ties", ["optimistic", "pessimistic"])
@pytest.mark.parametrize("chunk_size", [1, 2, 100])
def test_hand_computed_ranks_with_ties(ties, chunk_size):
    t2i = text_to_image_ranks(IMAGES, TEXTS, OWNERS, chunk_size=chunk_size, ties=ties)
    i2t = image_to_text_ranks(IMAGES, TEXTS, OWNERS, chunk_size=chunk_size, ties=ties)
    assert t2i.tolist() == EXPECTED[ties]["t2i"]
    assert i2t.tolist() == EXPECTED[ties]["i2t"]


def test_hand_computed_recalls():
    m = retrieval_metrics(IMAGES, TEXTS, OWNERS, ks=(1, 2, 3), chunk_size=2)
    assert m["image_to_text_recall@1"] == 0.0
    assert m["image_to_text_recall@2"] == pytest.approx(1 / 3)
    assert m["image_to_text_recall@3"] == 1.0
    assert m["text_to_image_recall@1"] == pytest.approx(1 / 5)
    assert m["text_to_image_recall@2"] == pytest.approx(3 / 5)
    assert m["text_to_image_recall@3"] == 1.0
    assert m["n_images"] == 3 and m["n_texts"] == 5
    opt = retrieval_metrics(IMAGES, TEXTS, OWNERS, ks=(1,), ties="optimistic")
    assert opt["image_to_text_recall@1"] == pytest.approx(2 / 3)
    assert opt["text_to_image_recall@1"] == pytest.approx(4 / 5)


def test_any_caption_counts_for_image_to_text():
    # The image's first caption is far away, its second is the nearest text: retrieved at rank 0.
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    m = retrieval_metrics(images, texts, torch.tensor([0, 0, 1]), ks=(1,))
    assert m["image_to_text_recall@1"] == 1.0
    assert m["text_to_image_recall@1"] == pytest.approx(2 / 3)  # T0 ranks its own image last


def test_collapsed_model_scores_zero_under_pessimistic_ties():
    images, texts = torch.ones(10, 4), torch.ones(30, 4)
    owners = torch.arange(30) % 10
    assert retrieval_metrics(images, texts, owners, ks=(1,))["text_to_image_recall@1"] == 0.0
    assert (
        retrieval_metrics(images, texts, owners, ks=(1,), ties="optimistic")["text_to_image_recall@1"] == 1.0
    )


def _random_case(seed: int, n: int, m: int, quantised: bool):
    g = torch.Generator().manual_seed(seed)
    owners = torch.cat([torch.arange(n), torch.randint(0, n, (m - n,), generator=g)])
    owners = owners[torch.randperm(m, generator=g)]  # captions not grouped by image
    if quantised:  # entries in {-1, 0, 1}: many exact ties
        return (
            torch.randint(-1, 2, (n, 3), generator=g).float(),
            torch.randint(-1, 2, (m, 3), generator=g).float(),
            owners,
        )
    images = torch.nn.functional.normalize(torch.randn(n, 16, generator=g), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(m, 16, generator=g), dim=-1)
    return images, texts, owners


@pytest.mark.parametrize("quantised", [False, True])
@pytest.mark.parametrize("ties", ["optimistic", "pessimistic"])
def test_chunked_matches_reference(quantised, ties):
    images, texts, owners = _random_case(0, 23, 61, quantised)
    expected = retrieval_metrics_reference(images, texts, owners, ks=(1, 5, 10), ties=ties)
    for chunk_size in (1, 4, 7, 23, 64, 1000):  # 4 and 7 do not divide 23 or 61
        got = retrieval_metrics(images, texts, owners, ks=(1, 5, 10), chunk_size=chunk_size, ties=ties)
        assert got == expected, chunk_size


def test_input_errors():
    with pytest.raises(ValueError, match="no caption"):
        retrieval_metrics(IMAGES, TEXTS[:2], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="outside"):
        retrieval_metrics(IMAGES, TEXTS[:1], torch.tensor([3]))
    with pytest.raises(ValueError, match="ties"):
        retrieval_metrics(IMAGES, TEXTS, OWNERS, ties="random")


# --- loaders ------------------------------------------------------------------------------------


def test_csv_groups_rows_by_image_with_configurable_columns(tmp_path):
    path = tmp_path / "caps.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "words", "other"])
        w.writerows([["a.png", "a cat", "x"], ["b.png", "a dog", "y"], ["a.png", "a kitten", "z"]])
    caps = load_captions(path, image_column="file", caption_column="words")
    assert caps.images == [tmp_path / "a.png", tmp_path / "b.png"]
    assert caps.captions == ["a cat", "a dog", "a kitten"]
    assert caps.text_to_image == [0, 1, 0]
    rooted = load_captions(path, image_column="file", caption_column="words", images_root=tmp_path / "imgs")
    assert rooted.images[0] == tmp_path / "imgs" / "a.png"
    with pytest.raises(ManifestError, match=r"caps.csv:1: no caption column .*\['file', 'words', 'other'\]"):
        load_captions(path, image_column="file")
    with pytest.raises(ManifestError, match="caps.csv:1: no column 'picture'"):
        load_captions(path, image_column="picture", caption_column="words")


def test_csv_empty_caption_names_line(tmp_path):
    path = tmp_path / "caps.csv"
    path.write_text("image,caption\na.png,hello\nb.png,\n")
    with pytest.raises(ManifestError, match="caps.csv:3: column 'caption': empty or missing caption"):
        load_captions(path)


def test_jsonl_caption_lists(tmp_path):
    path = tmp_path / "caps.jsonl"
    path.write_text(
        '{"image": "a.png", "caption": ["one", "two"]}\n\n{"image": "b.png", "caption": "three"}\n'
    )
    caps = load_captions(path)
    assert caps.captions == ["one", "two", "three"] and caps.text_to_image == [0, 0, 1]


def test_coco_captions_json(tmp_path):
    (tmp_path / "annotations").mkdir()
    path = tmp_path / "annotations" / "captions_val2017.json"
    data = {
        "images": [
            {"id": 42, "file_name": "000042.jpg"},
            {"id": 7, "file_name": "000007.jpg"},
            {"id": 9, "file_name": "x.jpg"},
        ],
        "annotations": [
            {"id": 1, "image_id": 7, "caption": "A dog."},
            {"id": 2, "image_id": 42, "caption": "A cat."},
            {"id": 3, "image_id": 7, "caption": "A puppy."},
        ],
    }
    path.write_text(json.dumps(data))
    caps = load_captions(path, images_root=tmp_path / "val2017")
    assert caps.images == [tmp_path / "val2017" / "000042.jpg", tmp_path / "val2017" / "000007.jpg"]
    assert [caps.captions[j] for j in range(3)] == ["A cat.", "A dog.", "A puppy."]
    assert caps.text_to_image == [0, 1, 1]
    assert caps.n_images_without_captions == 1  # image 9
    data["annotations"].append({"id": 4, "image_id": 5, "caption": "?"})
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"annotations\[3\].*image_id 5"):
        load_captions(path)


def test_karpathy_split_json(tmp_path):
    path = tmp_path / "dataset_coco.json"
    images = [
        {
            "filepath": "val2014",
            "filename": "a.jpg",
            "split": "test",
            "sentences": [{"raw": "A."}, {"raw": "B."}],
        },
        {"filepath": "train2014", "filename": "b.jpg", "split": "train", "sentences": [{"raw": "C."}]},
        {"filename": "c.jpg", "split": "test", "sentences": [{"raw": "D."}]},
    ]
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    caps = load_captions(path)
    assert caps.images == [tmp_path / "val2014" / "a.jpg", tmp_path / "c.jpg"]
    assert caps.captions == ["A.", "B.", "D."] and caps.text_to_image == [0, 0, 1]
    assert len(load_captions(path, split=None)) == 3
    with pytest.raises(ValueError, match=r"splits \['test', 'train'\]"):
        load_captions(path, split="val")


def test_unknown_json_layout(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"items": []}))
    with pytest.raises(ValueError, match="not a COCO captions file"):
        load_captions(path)


def _captions_folder(tmp_path):
    """Three coloured images, one unreadable file, and a JSONL of six captions (two for the bad file)."""
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    for i, rgb in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.new("RGB", (40, 40), rgb).save(tmp_path / "imgs" / f"{i}.png")
    (tmp_path / "imgs" / "bad.png").write_bytes(b"\x89PNG broken")
    rows = [
        ("0.png", "red"),
        ("1.png", "green"),
        ("bad.png", "lost"),
        ("2.png", "blue"),
        ("bad.png", "lost too"),
        ("0.png", "crimson"),
    ]
    (tmp_path / "caps.jsonl").write_text(
        "".join(json.dumps({"image": p, "caption": c}) + "\n" for p, c in rows)
    )
    return tmp_path / "caps.jsonl", tmp_path / "imgs"


def test_run_retrieval_skips_unreadable_images_and_caches(tmp_path):
    from cliplab.evaluation.retrieval import run_retrieval
    from cliplab.models import build_model, get_config
    from cliplab.tokenizer import tokenize
    from cliplab.transforms import image_transform

    captions, images_root = _captions_folder(tmp_path)
    torch.manual_seed(0)
    model = build_model(get_config("micro")).eval()
    kwargs = dict(
        images_root=images_root,
        batch_size=2,
        workers=0,
        cache_dir=tmp_path / "cache",
        chunk_size=2,
        progress=False,
    )
    result = run_retrieval(model, image_transform(32), tokenize, captions, **kwargs)
    assert (result["n_images"], result["n_texts"]) == (3, 4)
    assert result["n_skipped"] == 1 and result["n_captions_dropped"] == 2
    assert result["skipped"] == [str(images_root / "bad.png")]
    assert 0.0 <= result["image_to_text_recall@1"] <= 1.0 and result["text_to_image_recall@10"] == 1.0
    cached = sorted(p.name.split("-")[1] for p in (tmp_path / "cache").iterdir())
    assert cached == ["images", "texts"]
    assert run_retrieval(model, image_transform(32), tokenize, captions, **kwargs) == result


def test_retrieval_defaults_to_the_model_device(tmp_path, monkeypatch):
    from test_zeroshot import ModelElsewhere  # parameters on 'meta'; records where its inputs went

    from cliplab.evaluation import retrieval
    from cliplab.tokenizer import tokenize
    from cliplab.transforms import image_transform

    meta = torch.device("meta")
    model = ModelElsewhere()
    retrieval.encode_texts(model, tokenize, ["a", "b", "c"], batch_size=2, progress=False)
    assert model.seen == [("text", meta), ("text", meta)]

    # Meta tensors hold no values to score, so the recall computation only reports where it ran.
    scored_on = []

    def where(image_features, text_features, text_to_image, **kwargs):
        scored_on.extend([image_features.device, text_features.device])
        return {}

    monkeypatch.setattr(retrieval, "retrieval_metrics", where)
    captions, images_root = _captions_folder(tmp_path)
    model.seen.clear()
    retrieval.run_retrieval(
        model, image_transform(32), tokenize, captions, images_root=images_root, workers=0, progress=False
    )
    assert {kind for kind, _ in model.seen} == {"image", "text"}
    assert {device for _, device in model.seen} == {meta} and scored_on == [meta, meta]
