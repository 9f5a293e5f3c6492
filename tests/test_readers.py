"""One manifest reader for training, classification and retrieval: encodings, column defaults, errors.

Every test reads the same file through all three readers (``read_manifest`` for training,
``ManifestDataset`` for classification, ``load_captions`` for retrieval), so a difference between
them shows up as a failure here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from cliplab.data import DataConfig, build_train_loader, read_manifest
from cliplab.data.manifest import ManifestError
from cliplab.errors import CliplabError
from cliplab.evaluation.datasets import ManifestDataset
from cliplab.evaluation.retrieval import load_captions, run_retrieval
from cliplab.tokenizer import tokenize
from cliplab.transforms import image_transform

ROWS = [("img/a.png", "a café ☕", "cat"), ("img/b.png", "a dog", "dog"), ("img/a.png", "a kitten", "cat")]


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def csv_text(header: str = "filepath,caption,label", rows=ROWS) -> str:
    return header + "\n" + "".join(",".join(r) + "\n" for r in rows)


def jsonl_text(keys=("filepath", "caption", "label"), rows=ROWS) -> str:
    return "".join(json.dumps(dict(zip(keys, r, strict=True)), ensure_ascii=False) + "\n" for r in rows)


def read_all(path: Path, **columns) -> dict:
    """What each of the three readers makes of ``path``: the same facts, in comparable form."""
    training = read_manifest(path, columns.get("image"), columns.get("caption"))
    classification = ManifestDataset(path, path_column=columns.get("image"))
    retrieval = load_captions(path, image_column=columns.get("image"), caption_column=columns.get("caption"))
    return {
        "training": training,
        "classification": (classification.paths, classification.labels, classification.classnames),
        "retrieval": ([str(p) for p in retrieval.images], retrieval.captions, retrieval.text_to_image),
    }


def expected(root: Path) -> dict:
    a, b = str(root.resolve() / "img/a.png"), str(root.resolve() / "img/b.png")
    return {
        "training": [(a, "a café ☕"), (b, "a dog"), (a, "a kitten")],
        "classification": ([a, b, a], [0, 1, 0], ["cat", "dog"]),
        "retrieval": ([a, b], ["a café ☕", "a dog", "a kitten"], [0, 1, 0]),
    }


# ---------------------------------------------------------------------------------------------
# Encodings


@pytest.mark.parametrize(
    "encoding", ["utf-8-sig", "utf-16", "utf-16-be-bom"], ids=["utf8-bom", "utf16-le-bom", "utf16-be-bom"]
)
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_bom_and_utf16_files_read_the_same_in_all_three_readers(tmp_path, encoding, fmt):
    text = csv_text() if fmt == "csv" else jsonl_text()
    plain = write(tmp_path / f"plain.{fmt}", text)
    data = text.encode("utf-16-be") if encoding == "utf-16-be-bom" else text.encode(encoding)
    marked = tmp_path / f"marked.{fmt}"
    marked.write_bytes((b"\xfe\xff" if encoding == "utf-16-be-bom" else b"") + data)
    assert marked.read_bytes()[:2] in (b"\xef\xbb", b"\xff\xfe", b"\xfe\xff")  # really has a BOM
    assert read_all(marked) == read_all(plain) == expected(tmp_path)


def test_bom_csv_trains(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "img").mkdir(exist_ok=True)
        Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / "img" / f"{name}.png")
    manifest = write(tmp_path / "m.csv", csv_text(), "utf-8-sig")
    loader = build_train_loader(
        DataConfig(source="manifest", path=str(manifest), workers=0),
        transform=image_transform(16, train=True), tokenize=tokenize, batch_size=3, seed=0, epoch=0,
    )  # fmt: skip
    (batch,) = list(loader)
    assert len(batch) == 3 and loader.num_skipped == 0


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_latin1_file_is_a_one_line_error_naming_file_and_line(tmp_path, fmt):
    rows = [(p, c.replace(" ☕", ""), label) for p, c, label in ROWS]  # Latin-1 has no ☕
    text = csv_text(rows=rows) if fmt == "csv" else jsonl_text(rows=rows)
    path = write(tmp_path / f"latin.{fmt}", text, "latin-1")  # "café" on the first sample's line
    line = 2 if fmt == "csv" else 1
    for name, read in (
        ("training", lambda: read_manifest(path)),
        ("classification", lambda: ManifestDataset(path)),
        ("retrieval", lambda: load_captions(path)),
    ):
        with pytest.raises(ManifestError) as info:
            read()
        message = str(info.value)
        assert isinstance(info.value, CliplabError), name
        assert "\n" not in message, name
        assert message.startswith(f"{path}:{line}: ") and "not valid UTF-8" in message, (name, message)
        assert "iconv" in message, name  # says how to fix it


# ---------------------------------------------------------------------------------------------
# Columns


@pytest.mark.parametrize("image", ["filepath", "path", "image"])
@pytest.mark.parametrize("caption", ["caption", "text"])
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_default_columns(tmp_path, image, caption, fmt):
    keys = (image, caption, "label")
    path = tmp_path / f"m.{fmt}"
    write(path, csv_text(",".join(keys)) if fmt == "csv" else jsonl_text(keys))
    assert read_all(path) == expected(tmp_path)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_defaults_are_tried_in_order_and_a_named_column_overrides(tmp_path, fmt):
    keys = ("image", "text", "path", "caption", "label")
    rows = [
        ("img/x.png", "from text", "img/a.png", "a café ☕", "cat"),
        ("img/y.png", "t", "img/b.png", "a dog", "dog"),
    ]
    rows.append(("img/x.png", "t2", "img/a.png", "a kitten", "cat"))
    path = tmp_path / f"m.{fmt}"
    write(path, csv_text(",".join(keys), rows) if fmt == "csv" else jsonl_text(keys, rows))
    assert read_all(path) == expected(tmp_path)  # "path" before "image", "caption" before "text"
    named = read_all(path, image="image", caption="text")
    x, y = str(tmp_path.resolve() / "img/x.png"), str(tmp_path.resolve() / "img/y.png")
    assert named["training"] == [(x, "from text"), (y, "t"), (x, "t2")]
    assert named["classification"][0] == [x, y, x]
    assert named["retrieval"] == ([x, y], ["from text", "t", "t2"], [0, 1, 0])


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_missing_column_names_the_file_and_the_columns_present(tmp_path, fmt):
    keys = ("file", "words", "label")
    path = tmp_path / f"m.{fmt}"
    write(path, csv_text(",".join(keys)) if fmt == "csv" else jsonl_text(keys))
    present = "['file', 'words', 'label']" if fmt == "csv" else "['file', 'label', 'words']"
    for read in (lambda: read_manifest(path), lambda: ManifestDataset(path), lambda: load_captions(path)):
        with pytest.raises(ManifestError) as info:
            read()
        message = str(info.value)
        assert message.startswith(f"{path}:1: no image "), message
        assert "'filepath', 'path', 'image'" in message and present in message, message
    with pytest.raises(
        ManifestError, match=r"m\.\w+:1: no (column|key) 'picture'.*" + present.replace("[", r"\[")
    ):
        load_captions(path, image_column="picture", caption_column="words")
    with pytest.raises(ManifestError, match=r":1: no caption (column|key) \(looked for 'caption', 'text'\)"):
        read_manifest(path, image_key="file")
    with pytest.raises(ManifestError, match=r":1: no (column|key) 'class'.*label_column="):
        ManifestDataset(path, path_column="file", label_column="class")


def test_jsonl_row_without_the_chosen_key_names_its_line(tmp_path):
    path = write(tmp_path / "m.jsonl", jsonl_text() + '{"path": "c.png", "caption": "c", "label": "cat"}\n')
    for read in (lambda: read_manifest(path), lambda: ManifestDataset(path), lambda: load_captions(path)):
        with pytest.raises(
            ManifestError, match=r"m\.jsonl:4: no key 'filepath'; this line has keys \['caption'"
        ):
            read()


# ---------------------------------------------------------------------------------------------
# A manifest written by `cliplab data synthetic --format files` works with retrieval evaluation


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_synthetic_manifest_evaluates_with_retrieval(tmp_path, fmt):
    from cliplab.data.synthetic import SyntheticCaptions
    from cliplab.data.writers import write_files
    from cliplab.models import build_model, get_config

    data = SyntheticCaptions(6, seed=0, image_size=32)
    manifest = write_files([data[i] for i in range(6)], tmp_path / "synth", fmt=fmt)
    caps = load_captions(manifest)
    assert caps.images == [manifest.parent.resolve() / f"images/{i:06d}.png" for i in range(6)]
    assert caps.captions == [data[i].caption for i in range(6)]
    torch.manual_seed(0)
    model = build_model(get_config("micro")).eval()
    result = run_retrieval(model, image_transform(32), tokenize, manifest, workers=0, progress=False)
    assert (result["n_images"], result["n_texts"], result["n_skipped"]) == (6, 6, 0)
    assert result["text_to_image_recall@10"] == 1.0
