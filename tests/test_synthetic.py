"""The synthetic captioned-image dataset, its zero-shot tasks, the on-disk writers and `cliplab data`."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import pickle
import re
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cliplab.data.synthetic import (
    COUNT_WORDS,
    HELD_OUT_PAIRS,
    POSITIONS,
    SHAPES,
    WORDS,
    SyntheticCaptions,
    sample_scene,
    zero_shot_tasks,
)
from cliplab.data.synthetic_render import (
    BACKGROUND_COLOURS,
    INK_COLOURS,
    LOOKALIKE_SHAPES,
    OBJECT_COLOURS,
    PAPER_COLOURS,
    PLURALS,
    font_dir,
)
from cliplab.data.writers import write_files, write_image_folder, write_webdataset
from cliplab.errors import UsageError

N_SCAN = 8000  # scenes scanned by the attribute/caption checks (no pixels drawn: ~0.5 s)


@pytest.fixture(scope="module")
def train_scenes():
    return [sample_scene(0, "train", i) for i in range(N_SCAN)]


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def _fingerprint(sample) -> tuple:
    return hashlib.sha256(sample.image.tobytes()).hexdigest(), sample.caption, json.dumps(sample.attributes)


# ---------------------------------------------------------------- determinism


def test_same_index_gives_same_sample_across_calls_instances_and_pickle():
    a = SyntheticCaptions(100, seed=5, image_size=48)
    b = SyntheticCaptions(100, seed=5, image_size=48)
    c = pickle.loads(pickle.dumps(a))
    for i in (0, 1, 57, 99):
        assert _fingerprint(a[i]) == _fingerprint(a[i]) == _fingerprint(b[i]) == _fingerprint(c[i])
    assert _fingerprint(a[-1]) == _fingerprint(a[99])


def test_same_index_gives_same_bytes_in_a_subprocess():
    code = (
        "import hashlib, json\n"
        "from cliplab.data.synthetic import SyntheticCaptions\n"
        "ds = SyntheticCaptions(50, seed=3, image_size=40, split='val')\n"
        "print(json.dumps([[hashlib.sha256(ds[i].image.tobytes()).hexdigest(), ds[i].caption] for i in (0, 7, 49)]))\n"
    )
    # A different string-hash seed in the child: generation must not depend on Python's hash().
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    ds = SyntheticCaptions(50, seed=3, image_size=40, split="val")
    expected = [[hashlib.sha256(ds[i].image.tobytes()).hexdigest(), ds[i].caption] for i in (0, 7, 49)]
    assert json.loads(out.stdout) == expected


def test_seed_split_and_index_change_the_sample():
    base = SyntheticCaptions(10, seed=0)
    others = [SyntheticCaptions(10, seed=1)[3], SyntheticCaptions(10, split="val")[3], base[4]]
    assert all(_fingerprint(o)[0] != _fingerprint(base[3])[0] for o in others)
    assert len({base[i].caption for i in range(10)}) >= 8


@pytest.mark.parametrize("size", [32, 64, 224])
def test_image_size_and_mode(size):
    ds = SyntheticCaptions(4, image_size=size)
    for i in range(4):
        img = ds[i].image
        assert img.mode == "RGB" and img.size == (size, size)
        assert _pixels(img).std() > 5  # something was drawn on the background


def test_bad_arguments_and_out_of_range_index():
    with pytest.raises(ValueError, match="image_size"):
        SyntheticCaptions(10, image_size=8)
    with pytest.raises(IndexError):
        SyntheticCaptions(3)[3]
    assert [s.caption for s in SyntheticCaptions(3)] == [SyntheticCaptions(3)[i].caption for i in range(3)]


def test_missing_matplotlib_is_a_one_line_usage_error(monkeypatch):
    # sys.modules[name] = None makes both `import` and `find_spec` see the package as not installed.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    for make in (font_dir, lambda: SyntheticCaptions(3)):  # the dataset fails when built, not in a worker
        with pytest.raises(UsageError, match=re.escape("pip install 'cliplab[train]'")) as err:
            make()
        assert "\n" not in str(err.value)


# ---------------------------------------------------------------- held-out pairs and captions


def _held_out_mentions(caption: str) -> list[tuple[str, str]]:
    found = []
    for colour, shape in HELD_OUT_PAIRS:
        plural = PLURALS[shape]
        adjacent = rf"\b{colour} (?:{shape}|{plural})\b"
        postposed = rf"\b(?:{shape}|{plural}) (?:colored |in ){colour}\b"
        if re.search(adjacent, caption) or re.search(postposed, caption):
            found.append((colour, shape))
    return found


def test_held_out_pair_detector_catches_both_phrasings():
    assert _held_out_mentions("a small red triangle on the left.") == [("red", "triangle")]
    assert _held_out_mentions("a circle colored blue.") == [("blue", "circle")]
    assert _held_out_mentions("a red circle and a blue square.") == []


def test_training_never_draws_or_names_a_held_out_pair(train_scenes):
    for scene, caption, attrs in train_scenes:
        drawn = {(s.colour, s.shape) for s in scene.shapes}
        assert not drawn & set(HELD_OUT_PAIRS), caption
        assert not {(o["colour"], o["shape"]) for o in attrs["objects"]} & set(HELD_OUT_PAIRS)
        assert _held_out_mentions(caption) == [], caption


def test_every_held_out_colour_and_shape_is_still_trained_with_other_partners(train_scenes):
    seen = {(o["colour"], o["shape"]) for _, _, a in train_scenes for o in a["objects"]}
    for colour, shape in HELD_OUT_PAIRS:
        assert len({s for c, s in seen if c == colour}) >= 5
        assert len({c for c, s in seen if s == shape}) >= 5
        # each pair shares its colour with one other pair and its shape with another: both are needed
        assert sum(c == colour for c, _ in HELD_OUT_PAIRS) >= 2
        assert sum(s == shape for _, s in HELD_OUT_PAIRS) >= 2


SHAPE_OF_WORD = {w: s for s in SHAPES for w in (s, PLURALS[s])}
FONT_OF_WORD = {
    "serif": {"serif", "serif-bold", "serif-italic", "serif-bold-italic", "times"},
    "bold": {
        "bold",
        "bold-italic",
        "serif-bold",
        "serif-bold-italic",
        "mono-bold",
        "times-bold",
        "times-bold-italic",
    },
    "italics": {
        "italic",
        "bold-italic",
        "serif-italic",
        "serif-bold-italic",
        "times-italic",
        "times-bold-italic",
    },
    "slanted": {"italic", "mono-italic"},
    "monospace": {"mono", "mono-bold"},
    "typewriter": {"mono", "mono-italic"},
    "book": {"times", "times-bold", "times-italic", "times-bold-italic"},
}
NUMBER_WORD = dict(
    zip(
        ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
        "0123456789",
        strict=True,
    )
)
HAND_WORDS, PRINT_WORDS = (
    {"handwritten", "hand", "scribbled", "handwriting"},
    {"printed", "typed", "typeset", "print"},
)
PATTERN_OF_WORD = {
    "plain": "plain",
    "striped": "striped",
    "dotted": "dotted",
    "gradient": "gradient",
    "fading": "gradient",
}


def _check_glyph_caption(caption: str, attrs: dict) -> None:
    """A digit alone on paper: its digit or number word, its ink and paper, how it was made."""
    words = set(re.findall(r"[a-z0-9]+", caption))
    text = attrs["text"]
    assert {w for w in words if w.isdigit()} | {NUMBER_WORD[w] for w in words if w in NUMBER_WORD} == {
        text["text"]
    }
    named, rest = set(), caption
    for n in sorted((*INK_COLOURS, *PAPER_COLOURS), key=len, reverse=True):  # "black ink" before "black"
        if re.search(rf"\b{n}\b", rest):
            named.add(n)
            rest = re.sub(rf"\b{n}\b", " ", rest)
    assert named <= {text["colour"], attrs["background"]["colour"]}, caption
    loose = words - {w for n in named for w in n.split()}  # colour words outside an ink or paper name
    assert not loose & (set(OBJECT_COLOURS) | set(BACKGROUND_COLOURS)), caption
    assert not words & (HAND_WORDS if text["kind"] == "printed" else PRINT_WORDS), caption
    for w in words & set(FONT_OF_WORD):
        assert text["font"] in FONT_OF_WORD[w], caption
    not_there = {"left", "right", "top", "bottom", "small", "large", "shape", "object", *SHAPE_OF_WORD}
    assert not words & not_there, caption


def _check_caption(caption: str, scene, attrs: dict) -> None:
    if attrs["kind"] == "glyph":
        return _check_glyph_caption(caption, attrs)
    words = re.findall(r"[a-z0-9]+", caption)
    objs, text = attrs["objects"], attrs.get("text")
    colours = (
        {o["colour"] for o in objs} | {attrs["background"]["colour"]} | ({text["colour"]} if text else set())
    )
    assert {w for w in words if w in OBJECT_COLOURS or w in BACKGROUND_COLOURS} <= colours
    assert {SHAPE_OF_WORD[w] for w in words if w in SHAPE_OF_WORD} <= {o["shape"] for o in objs}
    assert {w for w in words if w in ("small", "large")} <= {o["size"] for o in objs}
    counts = {COUNT_WORDS.index(w) + 1 for w in words if w in COUNT_WORDS}
    assert counts <= {attrs["count"]}
    assert {PATTERN_OF_WORD[w] for w in words if w in PATTERN_OF_WORD} <= {attrs["background"]["pattern"]}
    positions = {"middle" if w == "middle" else w for w in words if w in POSITIONS or w == "middle"}
    if attrs["kind"] == "single":
        assert positions <= {objs[0]["position"], "middle" if objs[0]["position"] == "center" else ""}
    elif attrs["kind"] == "relation":
        assert positions <= set(attrs["relation"]["relation"].split())
    else:
        assert not positions
    shown = text["text"] if text else None
    assert {w for w in words if w.isdigit() or w in WORDS} <= {shown}
    for w in words:
        if w in FONT_OF_WORD:
            assert text and text["font"] in FONT_OF_WORD[w], caption


def test_captions_mention_only_what_is_in_the_scene(train_scenes):
    kinds = Counter()
    for scene, caption, attrs in train_scenes:
        kinds[attrs["kind"]] += 1
        assert caption and caption == caption.strip()
        assert attrs["count"] == len(scene.shapes) == len(attrs["objects"])
        _check_caption(caption, scene, attrs)
        json.dumps(attrs)  # JSON-serialisable
    assert set(kinds) == {"single", "lookalike", "relation", "count", "group", "digit", "word", "glyph"}


def test_lookalike_shapes_are_named_only_when_large(train_scenes):
    """A small circle or hexagon is a few pixels wide: its caption names its colour, not its shape;
    a "lookalike" scene is one large circle or hexagon named by its shape alone."""
    named = 0
    for _, caption, attrs in train_scenes:
        words = set(re.findall(r"[a-z]+", caption))
        shapes_named = {SHAPE_OF_WORD[w] for w in words if w in SHAPE_OF_WORD}
        for shape in shapes_named & set(LOOKALIKE_SHAPES):
            named += 1
            assert any(o["shape"] == shape and o["size"] == "large" for o in attrs["objects"]), caption
        if attrs["kind"] == "lookalike":
            (o,) = attrs["objects"]
            assert o["shape"] in LOOKALIKE_SHAPES and o["size"] == "large"
            assert shapes_named == {o["shape"]} and not words & set(OBJECT_COLOURS), caption
    assert named > 500


def test_position_and_count_are_named_alone_in_some_captions(train_scenes):
    """A caption naming only a position shows a small shape (a large one cannot move far from the
    centre); about a third of count captions name only the number, with a generic noun."""
    position_alone = count_alone = counts = 0
    for _, caption, attrs in train_scenes:
        words = set(re.findall(r"[a-z]+", caption))
        attributes = words & (set(OBJECT_COLOURS) | set(SHAPE_OF_WORD))
        if attrs["kind"] == "single" and words & {*POSITIONS, "middle"} and not attributes:
            position_alone += 1
            (o,) = attrs["objects"]
            assert o["size"] == "small" and o["r"] <= 0.155, caption
        elif attrs["kind"] == "count":
            counts += 1
            if not attributes:
                count_alone += 1
                generic = {"shape", "shapes", "object", "objects"}
                assert words & {*COUNT_WORDS, "single"} and words & generic, caption
    assert position_alone > 400
    assert 0.25 < count_alone / counts < 0.45


def test_attribute_geometry_matches_its_words(train_scenes):
    for _, caption, attrs in train_scenes:
        objs = attrs["objects"]
        if attrs["kind"] == "relation":
            rel = attrs["relation"]
            a, b = objs[rel["subject"]], objs[rel["object"]]
            dx, dy = b["x"] - a["x"], b["y"] - a["y"]
            along, across = (dx, dy) if rel["relation"] in ("left of", "right of") else (dy, dx)
            sign = 1 if rel["relation"] in ("left of", "above") else -1
            assert sign * along >= a["r"] + b["r"] - 1e-6, caption  # apart along the relation's axis
            assert abs(along) > abs(across), caption
        elif attrs["kind"] == "single":
            o = objs[0]
            near = {"left": o["x"], "right": 1 - o["x"], "top": o["y"], "bottom": 1 - o["y"]}
            if o["position"] == "center":
                assert max(abs(o["x"] - 0.5), abs(o["y"] - 0.5)) < 0.06
            else:
                assert near[o["position"]] < 0.31 and min(near.values()) == near[o["position"]]
        for i, p in enumerate(objs):  # no two shapes overlap, so counts are countable
            for q in objs[i + 1 :]:
                assert math.dist((p["x"], p["y"]), (q["x"], q["y"])) > p["r"] + q["r"], caption
            assert p["r"] <= p["x"] <= 1 - p["r"] and p["r"] <= p["y"] <= 1 - p["r"]


# ---------------------------------------------------------------- zero-shot tasks


@pytest.fixture(scope="module")
def tasks():
    return zero_shot_tasks(image_size=32, per_class=3, seed=0)


def test_tasks_have_expected_classes_and_balanced_labels(tasks):
    sizes = {t.name: len(t.classnames) for t in tasks}
    assert sizes == {"colour": 8, "shape": 8, "count": 4, "position": 5, "digit": 10, "compositional": 8}
    for t in tasks:
        assert len(t.images) == len(t.labels) == 3 * len(t.classnames)
        assert Counter(t.labels) == dict.fromkeys(range(len(t.classnames)), 3)
        assert all(img.size == (32, 32) and img.mode == "RGB" for img in t.images)
        assert t.templates and all(tpl.count("{}") == 1 for tpl in t.templates)
    comp = next(t for t in tasks if t.name == "compositional")
    assert comp.classnames == [f"{c} {s}" for c, s in HELD_OUT_PAIRS]


def test_task_class_names_are_training_vocabulary(tasks, train_scenes):
    vocab = {w for _, caption, _ in train_scenes for w in re.findall(r"[a-z0-9]+", caption)}
    for t in tasks:
        for name in t.classnames:
            assert set(name.split()) <= vocab, (t.name, name)


def test_task_images_show_the_labelled_colour(tasks):
    by_name = {t.name: t for t in tasks}
    for name, colour_of in (("colour", lambda c: c), ("compositional", lambda c: c.split()[0])):
        t = by_name[name]
        for img, label in zip(t.images, t.labels, strict=True):
            target = np.array(OBJECT_COLOURS[colour_of(t.classnames[label])], dtype=float)
            close = np.linalg.norm(_pixels(img).astype(float) - target, axis=-1) < 40
            assert close.mean() > 0.03, (name, t.classnames[label])


def test_tasks_are_deterministic_and_selectable():
    a = zero_shot_tasks(image_size=32, per_class=2, names=["digit", "count"])
    b = zero_shot_tasks(image_size=32, per_class=2, names=["digit", "count"])
    assert [t.name for t in a] == ["digit", "count"]
    for ta, tb in zip(a, b, strict=True):
        assert [i.tobytes() for i in ta.images] == [i.tobytes() for i in tb.images]
    with pytest.raises(ValueError, match="unknown zero-shot task"):
        zero_shot_tasks(names=["colour", "texture"])


# ---------------------------------------------------------------- writers


@pytest.fixture(scope="module")
def small():
    return SyntheticCaptions(10, seed=2, image_size=32)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_write_files_round_trip(tmp_path, small, fmt):
    manifest = write_files(small, tmp_path, fmt=fmt)
    assert manifest == tmp_path / f"manifest.{fmt}"
    text = manifest.read_text(encoding="utf-8")
    if fmt == "jsonl":
        rows = [json.loads(line) for line in text.splitlines()]
    else:
        rows = list(csv.DictReader(io.StringIO(text), delimiter="," if fmt == "csv" else "\t"))
    assert len(rows) == len(small)
    for i, row in enumerate(rows):
        assert row["filepath"] == f"images/{i:06d}.png"
        assert row["caption"] == small[i].caption
        np.testing.assert_array_equal(
            _pixels(Image.open(manifest.parent / row["filepath"])), _pixels(small[i].image)
        )


def _read_shards(shards):
    members = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                assert m.mtime == 0 and m.uid == 0 and m.gid == 0
                members[m.name] = tar.extractfile(m).read()
    return members


def test_write_webdataset_round_trip_and_byte_stable(tmp_path, small):
    shards = write_webdataset(small, tmp_path / "a", shard_size=4)
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    sizes = json.loads((tmp_path / "a" / "sizes.json").read_text())
    assert sizes == {"shard-000000.tar": 4, "shard-000001.tar": 4, "shard-000002.tar": 2}
    members = _read_shards(shards)
    with tarfile.open(shards[0]) as tar:
        assert tar.getnames()[:3] == ["000000.png", "000000.txt", "000000.json"]
    for i in range(len(small)):
        key = f"{i:06d}"
        np.testing.assert_array_equal(
            _pixels(Image.open(io.BytesIO(members[f"{key}.png"]))), _pixels(small[i].image)
        )
        assert members[f"{key}.txt"].decode() == small[i].caption
        assert json.loads(members[f"{key}.json"]) == small[i].attributes
    again = write_webdataset(small, tmp_path / "b", shard_size=4)
    assert [p.read_bytes() for p in shards] == [p.read_bytes() for p in again]


def test_image_bytes_identical_across_layouts(tmp_path, small):
    manifest = write_files(small, tmp_path / "files")
    members = _read_shards(write_webdataset(small, tmp_path / "wds", shard_size=100))
    for i in range(len(small)):
        assert (manifest.parent / f"images/{i:06d}.png").read_bytes() == members[f"{i:06d}.png"]


def test_write_image_folder_round_trip(tmp_path):
    (task,) = zero_shot_tasks(image_size=32, per_class=2, names=["compositional"])
    out = write_image_folder(task, tmp_path / "comp")
    classnames = (out / "classnames.txt").read_text().splitlines()
    folders = (out / "folders.txt").read_text().splitlines()
    assert classnames == task.classnames
    assert folders[0] == "red_triangle" and len(set(folders)) == len(folders)
    assert (out / "templates.txt").read_text().splitlines() == task.templates
    found = {}
    for label, folder in enumerate(folders):
        for path in sorted((out / folder).glob("*.png")):
            found[int(path.stem)] = (label, _pixels(Image.open(path)))
    assert sorted(found) == list(range(len(task.images)))
    for i, (label, pixels) in found.items():
        assert label == task.labels[i]
        np.testing.assert_array_equal(pixels, _pixels(task.images[i]))


# ---------------------------------------------------------------- CLI


@pytest.fixture
def cli(monkeypatch):
    from cliplab.cli import main as cli_main

    # Only the `data` subcommand: this test must not depend on the other subcommands' modules.
    monkeypatch.setattr(cli_main, "SUBCOMMANDS", {"data": cli_main.SUBCOMMANDS["data"]})
    return cli_main.main


def test_cli_synthetic_webdataset_and_files(tmp_path, cli):
    args = ["data", "synthetic", "--n", "5", "--image-size", "32", "--seed", "4"]
    assert cli([*args, "--out", str(tmp_path / "w"), "--format", "webdataset", "--shard-size", "2"]) == 0
    assert json.loads((tmp_path / "w" / "sizes.json").read_text()) == {
        "shard-000000.tar": 2,
        "shard-000001.tar": 2,
        "shard-000002.tar": 1,
    }
    assert cli([*args, "--out", str(tmp_path / "f"), "--format", "files", "--manifest", "jsonl"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "f" / "manifest.jsonl").read_text().splitlines()]
    assert [r["caption"] for r in rows] == [s.caption for s in SyntheticCaptions(5, seed=4, image_size=32)]


def test_cli_synthetic_without_matplotlib_says_which_extra(tmp_path, cli, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli(["data", "synthetic", "--n", "2", "--out", str(tmp_path / "w"), "--format", "files"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.endswith("pip install 'cliplab[train]'"), err


def test_cli_tasks(tmp_path, cli):
    assert (
        cli(
            [
                "data",
                "tasks",
                "--out",
                str(tmp_path),
                "--per-class",
                "2",
                "--image-size",
                "32",
                "--tasks",
                "digit",
                "position",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digit", "position"]
    assert (tmp_path / "digit" / "classnames.txt").read_text().split() == [str(d) for d in range(10)]
    assert len(list((tmp_path / "position").glob("*/*.png"))) == 10
    assert cli(["data", "tasks", "--out", str(tmp_path), "--tasks", "texture"]) == 2


def test_folder_layout_paths_are_relative(tmp_path, small):
    manifest = write_files(small, tmp_path / "x", fmt="csv")
    for row in csv.DictReader(manifest.open()):
        assert not Path(row["filepath"]).is_absolute()
