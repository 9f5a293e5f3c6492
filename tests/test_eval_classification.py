"""Classification metrics, evaluation datasets, the feature cache and the zero-shot protocol."""

from __future__ import annotations

import csv
import io
import json
import tarfile

import pytest
import torch
from PIL import Image

from cliplab.data.manifest import ManifestError
from cliplab.evaluation import datasets as ds
from cliplab.evaluation import features as feats
from cliplab.evaluation.metrics import (
    classification_metrics,
    confusion_matrix,
    predict,
    save_confusion_matrix_png,
    topk_accuracy,
    true_class_rank,
)
from cliplab.evaluation.zeroshot import evaluate_zero_shot
from cliplab.models import build_model, get_config
from cliplab.tokenizer import tokenize
from cliplab.transforms import image_transform

# ---------------------------------------------------------------------------------------------
# Metrics


def test_metrics_hand_computed():
    # 6 classes, 4 samples. Ranks of the true class (ties -> lower index first):
    #   row 0: label 2 scores highest                 -> rank 0
    #   row 1: label 1 ties with class 0 (index lower) -> rank 1
    #   row 2: label 0 ties with class 3 (index higher) -> rank 0
    #   row 3: label 5 is lowest of six               -> rank 5
    logits = torch.tensor(
        [
            [0.1, 0.2, 0.9, 0.0, 0.0, 0.0],
            [0.5, 0.5, 0.1, 0.2, 0.3, 0.4],
            [0.7, 0.1, 0.1, 0.7, 0.1, 0.1],
            [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],
        ]
    )
    labels = torch.tensor([2, 1, 0, 5])
    assert true_class_rank(logits, labels).tolist() == [0, 1, 0, 5]
    assert predict(logits).tolist() == [2, 0, 0, 0]
    m = classification_metrics(logits, labels, ["a", "b", "c", "d", "e", "f"])
    assert m["top1"] == pytest.approx(2 / 4)
    assert m["top5"] == pytest.approx(3 / 4)
    assert topk_accuracy(logits, labels, k=2) == pytest.approx(3 / 4)
    assert topk_accuracy(logits, labels, k=6) == 1.0
    # Present classes: a (1/1), b (0/1), c (1/1), f (0/1); d and e have no images.
    assert m["per_class_recall"] == {"a": 1.0, "b": 0.0, "c": 1.0, "d": None, "e": None, "f": 0.0}
    assert m["mean_per_class_recall"] == pytest.approx(0.5)
    assert m["n_classes_present"] == 4 and m["n_samples"] == 4


def test_all_equal_scores_predict_class_zero():
    logits = torch.zeros(4, 3)
    labels = torch.tensor([0, 1, 2, 2])
    m = classification_metrics(logits, labels)
    assert m["top1"] == pytest.approx(0.25)  # only the class-0 sample
    assert "top5" not in m  # fewer than 5 classes
    assert m["mean_per_class_recall"] == pytest.approx(1 / 3)


def test_recall_is_not_accuracy():
    # Imbalanced: 3 images of class 0 all right, 1 of class 1 wrong -> top1 3/4, mean recall 1/2.
    logits = torch.tensor([[1.0, 0.0]] * 4)
    m = classification_metrics(logits, torch.tensor([0, 0, 0, 1]))
    assert m["top1"] == pytest.approx(0.75) and m["mean_per_class_recall"] == pytest.approx(0.5)


def test_metric_errors():
    with pytest.raises(ValueError, match="no samples"):
        classification_metrics(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        classification_metrics(torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="labels must lie"):
        classification_metrics(torch.zeros(1, 2), torch.tensor([2]))


def test_duplicate_classnames_keep_separate_recalls():
    m = classification_metrics(torch.eye(3), torch.tensor([0, 1, 2]), ["x", "missile", "missile"])
    assert m["per_class_recall"] == {"x": 1.0, "missile [1]": 1.0, "missile [2]": 1.0}


def test_confusion_matrix_and_png(tmp_path):
    cm = confusion_matrix(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 1]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    out = tmp_path / "cm.png"
    save_confusion_matrix_png(cm, ["a", "b", "c"], out)
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 100
    with pytest.raises(ValueError, match="unreadable"):
        save_confusion_matrix_png(torch.zeros(51, 51), [str(i) for i in range(51)], tmp_path / "big.png")


# ---------------------------------------------------------------------------------------------
# Datasets


def _png(path, colour=(255, 0, 0), size=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)


def test_image_folder_sorted_folders(tmp_path):
    for folder in ("zebra", "ant"):
        for i in range(2):
            _png(tmp_path / folder / f"{i}.png")
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    d = ds.ImageFolderDataset(tmp_path, image_transform(8))
    assert d.classnames == ["ant", "zebra"]
    assert d.labels == [0, 0, 1, 1]
    x, y = d[3]
    assert x.shape == (3, 8, 8) and y == 1


def test_image_folder_mapping_file(tmp_path):
    # Folders as written by cliplab.data.writers (sanitised names), names in a mapping file.
    _png(tmp_path / "red_circle" / "0.png")
    _png(tmp_path / "blue_square" / "0.png")
    (tmp_path / "classnames.txt").write_text("red circle\nblue square\n")
    d = ds.ImageFolderDataset(tmp_path)
    assert d.classnames == ["red circle", "blue square"]
    assert dict(zip([p.split("/")[-2] for p in d.paths], d.labels, strict=True)) == {
        "blue_square": 1,
        "red_circle": 0,
    }
    # A JSON folder -> name mapping; labels follow the sorted folders.
    (tmp_path / "classnames.txt").unlink()
    (tmp_path / "names.json").write_text(
        json.dumps({"red_circle": "a red circle", "blue_square": "a blue square"})
    )
    d = ds.ImageFolderDataset(tmp_path, classnames=tmp_path / "names.json")
    assert d.classnames == ["a blue square", "a red circle"]


def test_image_folder_with_writer_files(tmp_path):
    from cliplab.data.synthetic import zero_shot_tasks
    from cliplab.data.writers import write_image_folder

    (task,) = zero_shot_tasks(image_size=16, per_class=1, names=["shape"])
    write_image_folder(task, tmp_path)
    d = ds.ImageFolderDataset(tmp_path)
    assert d.classnames == task.classnames
    assert sorted(d.labels) == sorted(task.labels)
    for i in range(len(d)):  # each file holds the image of its label
        image = d.get(i)[0]
        assert image.size == task.images[int(d.paths[i].rsplit("/", 1)[1].split(".")[0])].size
        assert task.labels[int(d.paths[i].rsplit("/", 1)[1].split(".")[0])] == d.labels[i]


def test_duplicate_and_missing_classnames(tmp_path):
    _png(tmp_path / "a" / "0.png")
    _png(tmp_path / "b" / "0.png")
    (tmp_path / "classnames.txt").write_text("dog\ndog\n")
    with pytest.raises(ds.DatasetError, match="'dog' appears twice"):
        ds.ImageFolderDataset(tmp_path)
    (tmp_path / "classnames.txt").write_text("dog\n")
    with pytest.raises(ds.DatasetError, match="1 class names but .* 2 class folders"):
        ds.ImageFolderDataset(tmp_path)


def test_empty_dataset_is_an_error(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(ds.DatasetError, match="no images"):
        ds.ImageFolderDataset(tmp_path)
    manifest = tmp_path / "m.csv"
    manifest.write_text("filepath,label\n")
    with pytest.raises(ManifestError, match="m.csv: the manifest has no samples"):
        ds.ManifestDataset(manifest)


def test_manifest_with_labels(tmp_path):
    _png(tmp_path / "img" / "x.png")
    _png(tmp_path / "img" / "y.png", (0, 255, 0))
    rows = [("img/x.png", "cat"), ("img/y.png", "dog"), ("img/x.png", "cat")]
    csv_path = tmp_path / "m.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "name"])
        w.writerows(rows)
    d = ds.ManifestDataset(csv_path, label_column="name")
    assert d.classnames == ["cat", "dog"] and d.labels == [0, 1, 0]
    d = ds.ManifestDataset(csv_path, label_column="name", classnames=["dog", "cat"])
    assert d.labels == [1, 0, 1]
    with pytest.raises(ds.DatasetError, match=r"m.csv:3: label 'dog' is not one of the 1 class names"):
        ds.ManifestDataset(csv_path, label_column="name", classnames=["cat"])
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps({"filepath": p, "label": i}) for i, p in enumerate(["img/x.png", "img/y.png"]))
    )
    d = ds.ManifestDataset(jsonl, classnames=["a", "b"])
    assert d.labels == [0, 1] and d.classnames == ["a", "b"]
    with pytest.raises(ds.DatasetError, match=r"label\(s\) \[1\] have no class name"):
        ds.ManifestDataset(jsonl, classnames=["a"])


def test_webdataset_shards(tmp_path):
    shard = tmp_path / "shard-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for i, label in enumerate([1, 0, 1]):
            buf = io.BytesIO()
            Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(buf, format="PNG")
            for name, data in ((f"{i:04d}.png", buf.getvalue()), (f"{i:04d}.cls", str(label).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (tmp_path / "classnames.txt").write_text("zero\none\n")
    d = ds.load_classification_dataset(tmp_path, image_transform(8))
    assert isinstance(d, ds.WebDatasetShards)
    assert d.labels == [1, 0, 1] and d.classnames == ["zero", "one"]
    x, y = d[2]
    assert y == 1 and x.shape == (3, 8, 8)
    assert d.get(2)[0].shape == (3, 8, 8)
    assert d.source(1).endswith("shard-000000.tar:0001")
    # the feature-cache fingerprint covers the shard file and changes when the shard does
    before = d.fingerprint()
    assert before == ds.load_classification_dataset(tmp_path, image_transform(8)).fingerprint()
    with open(shard, "ab") as f:
        f.write(b"\0" * 1024)
    assert ds.load_classification_dataset(tmp_path, image_transform(8)).fingerprint() != before


def test_corrupt_image_skipped_and_counted(tmp_path):
    for i in range(3):
        _png(tmp_path / "a" / f"{i}.png")
    _png(tmp_path / "b" / "0.png")
    bad = tmp_path / "b" / "1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    torch.manual_seed(0)
    model = build_model(get_config("micro"))
    d = ds.ImageFolderDataset(tmp_path, image_transform(model.config.vision.image_size))
    assert d[d.paths.index(str(bad))] is None
    out = feats.extract_image_features(model, d, batch_size=2, workers=0, progress=False)
    assert out.features.shape == (4, model.config.embed_dim)
    assert out.labels.tolist() == [0, 0, 0, 1]
    assert [s.source for s in out.skipped] == [str(bad)] and "cannot decode" in out.skipped[0].reason
    torch.testing.assert_close(out.features.norm(dim=1), torch.ones(4))
    # The protocol reports the skip instead of scoring it.
    result = evaluate_zero_shot(model, tokenize, d, None, ["a photo of a {}."], workers=0, progress=False)
    assert result["n_images"] == 4 and result["n_skipped"] == 1 and result["skipped"] == [str(bad)]


# ---------------------------------------------------------------------------------------------
# Features cache and the zero-shot protocol


@pytest.fixture(scope="module")
def synthetic():
    from cliplab.data.synthetic import zero_shot_tasks

    (task,) = zero_shot_tasks(image_size=32, per_class=3, names=["colour"])
    return task


def test_feature_cache_hit_and_miss(tmp_path, synthetic, monkeypatch):
    torch.manual_seed(0)
    model = build_model(get_config("micro"))
    d = ds.InMemoryDataset.from_task(synthetic, image_transform(32))
    calls = []
    real = feats._compute
    monkeypatch.setattr(feats, "_compute", lambda *a, **k: calls.append(1) or real(*a, **k))

    first = feats.extract_image_features(model, d, workers=0, cache_path=tmp_path, progress=False)
    assert len(calls) == 1 and len(list(tmp_path.iterdir())) == 1
    again = feats.extract_image_features(model, d, workers=0, cache_path=tmp_path, progress=False)
    assert len(calls) == 1  # hit
    torch.testing.assert_close(again.features, first.features)
    assert again.labels.tolist() == first.labels.tolist() == synthetic.labels

    with torch.no_grad():
        model.visual.proj.add_(0.01)  # other weights: a miss, recomputed and rewritten
    changed = feats.extract_image_features(model, d, workers=0, cache_path=tmp_path, progress=False)
    assert len(calls) == 2 and not torch.allclose(changed.features, first.features)
    d16 = ds.InMemoryDataset.from_task(synthetic, image_transform(16))  # other preprocessing: another file
    assert feats.cache_file(tmp_path, d16) != feats.cache_file(tmp_path, d)
    # A file that is not a cache is recomputed, not trusted.
    feats.cache_file(tmp_path, d).write_bytes(b"garbage")
    feats.extract_image_features(model, d, workers=0, cache_path=tmp_path, progress=False)
    assert len(calls) == 3


def test_workers_give_same_features(synthetic):
    torch.manual_seed(0)
    model = build_model(get_config("micro"))
    d = ds.InMemoryDataset.from_task(synthetic, image_transform(32))
    a = feats.extract_image_features(model, d, batch_size=5, workers=0, progress=False)
    b = feats.extract_image_features(model, d, batch_size=7, workers=2, progress=False)
    torch.testing.assert_close(a.features, b.features, atol=1e-5, rtol=0)
    assert a.labels.tolist() == b.labels.tolist()


def test_evaluate_zero_shot_matches_manual(synthetic):
    from cliplab.evaluation.metrics import classification_metrics as cm
    from cliplab.zeroshot import build_zero_shot_classifier

    torch.manual_seed(1)
    model = build_model(get_config("micro"))
    d = ds.InMemoryDataset.from_task(synthetic, image_transform(32))
    result = evaluate_zero_shot(model, tokenize, d, None, synthetic.templates, workers=0, progress=False)
    with torch.no_grad():
        images = torch.stack([d[i][0] for i in range(len(d))])
        f = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
    w = build_zero_shot_classifier(model, tokenize, synthetic.classnames, synthetic.templates, progress=False)
    expected = cm(f @ w, torch.tensor(synthetic.labels), synthetic.classnames)
    assert result["top1"] == pytest.approx(expected["top1"])
    assert result["top5"] == pytest.approx(expected["top5"])
    assert result["per_class_recall"] == pytest.approx(expected["per_class_recall"])
    assert result["n_images"] == len(synthetic.labels) and result["n_skipped"] == 0
    assert sum(map(sum, result["confusion_matrix"])) == len(synthetic.labels)
    json.dumps(result)  # JSON-ready


# ---------------------------------------------------------------------------------------------
# Shards and decompression bombs: the same expansion and the same guarded decoder as training


def _cls_shard(path, images, labels):
    with tarfile.open(path, "w") as tar:
        for i, (img, label) in enumerate(zip(images, labels, strict=True)):
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            for name, data in ((f"{i:04d}.png", buf.getvalue()), (f"{i:04d}.cls", str(label).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_shard_specs_expand_as_for_training(tmp_path):
    from cliplab.data.wds import resolve_shards
    from cliplab.errors import UsageError

    for s in range(3):
        _cls_shard(tmp_path / f"shard-{s:06d}.tar", [Image.new("RGB", (8, 8), (s * 80, 0, 0))], [s])
    spec = str(tmp_path / "shard-{000002,000000}.tar")  # a brace list: webdataset's syntax
    d = ds.load_classification_dataset(spec, image_transform(8))
    assert (
        d.shards
        == resolve_shards(spec)
        == [str(tmp_path / "shard-000002.tar"), str(tmp_path / "shard-000000.tar")]
    )
    assert d.labels == [2, 0]
    with pytest.raises(UsageError, match=r"no shard file matches '.*shard-\{000007\.\.000009\}\.tar'"):
        ds.load_classification_dataset(str(tmp_path / "shard-{000007..000009}.tar"))


def test_decompression_bombs_are_skipped_and_counted_not_decoded(tmp_path, monkeypatch):
    import warnings

    from PIL import ImageFile

    images = [Image.new("RGB", (32, 32), (i * 60, 0, 0)) for i in range(3)]
    bomb = Image.new("RGB", (48, 48), (1, 2, 3))  # 2304 pixels: Pillow only warns under twice the limit
    (tmp_path / "shards").mkdir()
    shard = tmp_path / "shards" / "shard-000000.tar"
    _cls_shard(shard, [*images[:2], bomb, images[2]], [0, 1, 1, 0])
    (tmp_path / "files").mkdir()
    for i, img in enumerate([*images, bomb]):
        img.save(tmp_path / "files" / f"{i}.png")
    (tmp_path / "files" / "m.csv").write_text("filepath,label\n0.png,0\n1.png,1\n3.png,1\n2.png,0\n")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1600)
    decoded = []
    real = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda img: decoded.append(img.size) or real(img))
    torch.manual_seed(0)
    model = build_model(get_config("micro"))
    transform = image_transform(model.config.vision.image_size)
    cases = [
        (ds.WebDatasetShards(tmp_path / "shards", transform), f"{shard}:0002"),
        (ds.ManifestDataset(tmp_path / "files" / "m.csv", transform), str(tmp_path / "files" / "3.png")),
    ]
    for dataset, bomb_source in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            out = feats.extract_image_features(model, dataset, batch_size=2, workers=0, progress=False)
        assert out.features.shape[0] == 3 and out.labels.tolist() == [0, 1, 0]
        (skipped,) = out.skipped
        assert skipped.source == bomb_source and "MAX_IMAGE_PIXELS" in skipped.reason
    assert (32, 32) in decoded and (48, 48) not in decoded  # refused before its pixels were decoded
