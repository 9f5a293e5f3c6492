"""A procedurally generated captioned-image dataset and zero-shot tasks built on it.

Every sample is a function of (seed, split, index) alone: a stable hash of the three seeds a
`random.Random`, which picks a scene (coloured shapes, relations, counts, rendered digits and words on
patterned backgrounds) and a caption mentioning a random subset of what the scene contains. Nothing
is read from disk except matplotlib's bundled fonts, so DataLoader workers can generate on the fly.
This module is the demo's data: matplotlib comes with the ``train`` extra, and neither ``import
cliplab`` nor ``cliplab.load`` imports this module.

`HELD_OUT_PAIRS` are colour-shape combinations that `SyntheticCaptions` never draws or names, for
any split; the `compositional` zero-shot task classifies images of exactly those pairs. Each held-out
colour and shape belongs to two pairs, so the task needs both attributes, while each still appears in
training with six other partners.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from cliplab.data.glyphs import handwritten_digit
from cliplab.data.synthetic_render import (
    BACKGROUND_COLOURS,
    COUNT_ONE_TEMPLATES,
    COUNT_TEMPLATES,
    DARK_INKS,
    DARK_PAPERS,
    DIGIT_TEMPLATES,
    FONT_FILES,
    FONT_PHRASES,
    GLYPH_HAND,
    GLYPH_PRINT,
    GLYPH_TEMPLATES,
    GROUP_TEMPLATES,
    INVERSE,
    LIGHT_INKS,
    LIGHT_PAPERS,
    LOOKALIKE_SHAPES,
    MIN_CONTRAST,
    OBJECT_COLOURS,
    PATTERNS,
    PLURALS,
    POSITION_PHRASES,
    PREFIXES,
    RELATION_PHRASES,
    RELATION_TEMPLATES,
    SHAPE_OUTLINES,
    SHAPE_TEMPLATES,
    SINGLE_TEMPLATES,
    WORD_TEMPLATES,
    Background,
    Finish,
    Scene,
    ShapeSpec,
    StrokeSpec,
    TextSpec,
    article,
    background_phrase,
    contrast,
    fill_template,
    font_dir,
    noun_phrase,
    render,
)

COLOURS: tuple[str, ...] = tuple(OBJECT_COLOURS)
SHAPES: tuple[str, ...] = tuple(SHAPE_OUTLINES)
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")
COUNT_WORDS: tuple[str, ...] = ("one", "two", "three", "four")
DIGITS: tuple[str, ...] = tuple("0123456789")
NUMBER_WORDS: tuple[str, ...] = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)
WORDS: tuple[str, ...] = ("cat", "dog", "sun", "car", "cup", "hat", "bird", "fish")

HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("red", "triangle"),
    ("red", "star"),
    ("blue", "star"),
    ("blue", "circle"),
    ("yellow", "circle"),
    ("yellow", "square"),
    ("purple", "square"),
    ("purple", "triangle"),
)
_HELD_OUT = frozenset(HELD_OUT_PAIRS)

# (scene kind, weight) for training captions; text gets a large share because reading is slow to learn.
# "glyph": a digit alone on paper or a slate, handwritten (see cliplab.data.glyphs) or printed, often
# blurred or seen at low resolution, as in scans and photos of documents. "lookalike": one large
# circle or hexagon named by its shape alone (see _lookalike).
KIND_WEIGHTS: tuple[tuple[str, int], ...] = (
    ("single", 30),
    ("lookalike", 12),
    ("relation", 8),
    ("count", 13),
    ("group", 2),
    ("digit", 20),
    ("word", 1),
    ("glyph", 26),
)

# Which object colours stand out on each background, in a fixed order.
_CONTRASTING = {
    bg: tuple(c for c in COLOURS if c != bg and contrast(OBJECT_COLOURS[c], bg) >= MIN_CONTRAST)
    for bg in BACKGROUND_COLOURS
}
_EVAL_BACKGROUNDS = ("white", "gray", "black")


@dataclass
class SyntheticSample:
    """One generated example: an RGB image, its caption and what was drawn (JSON-serialisable)."""

    image: Image.Image
    caption: str
    attributes: dict[str, Any]


def make_rng(seed: int, split: str, index: int) -> random.Random:
    """A generator seeded by a stable hash of (seed, split, index): same stream in every process."""
    digest = hashlib.blake2b(f"cliplab-synthetic/{seed}/{split}/{index}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))


# ---------------------------------------------------------------- scene pieces


def _background(
    rng: random.Random, patterns: Sequence[str] = PATTERNS, colours: Sequence[str] = tuple(BACKGROUND_COLOURS)
) -> Background:
    return Background(rng.choice(colours), rng.choice(patterns), rng.randrange(3), rng.uniform(0.1, 0.18))


def _colour_shape(rng: random.Random, bg: str, used: Sequence[tuple[str, str]] = ()) -> tuple[str, str]:
    """A (colour, shape) visible on `bg`, never a held-out pair and not one of `used`."""
    while True:
        pair = (rng.choice(_CONTRASTING[bg]), rng.choice(SHAPES))
        if pair not in _HELD_OUT and pair not in used:
            return pair


def _shape(
    rng: random.Random, colour: str, shape: str, x: float, y: float, r: float
) -> tuple[ShapeSpec, dict]:
    spec = ShapeSpec(shape, colour, x, y, r, rng.uniform(-12.0, 12.0))
    attrs = {"shape": shape, "colour": colour, "size": "small" if r < 0.16 else "large"}
    return spec, attrs | {"x": round(x, 4), "y": round(y, 4), "r": round(r, 4)}


def _position_xy(rng: random.Random, position: str, r: float) -> tuple[float, float]:
    near, mid = rng.uniform(0.17, 0.3), rng.uniform(0.4, 0.6)
    x, y = {
        "left": (near, mid),
        "right": (1 - near, mid),
        "top": (mid, near),
        "bottom": (mid, 1 - near),
        "center": (rng.uniform(0.45, 0.55), rng.uniform(0.45, 0.55)),
    }[position]
    lo, hi = r + 0.02, 0.98 - r  # keep the whole shape inside the image
    return min(max(x, lo), hi), min(max(y, lo), hi)


def _at_position(
    rng: random.Random, colour: str, shape: str, position: str, r: float
) -> tuple[ShapeSpec, dict]:
    """One shape of radius `r` at a named position, its attributes recording the position."""
    spec, obj = _shape(rng, colour, shape, *_position_xy(rng, position, r), r)
    return spec, obj | {"position": position}


def _grid(rng: random.Random, n: int, rmin: float, rmax: float) -> list[tuple[float, float, float]]:
    """`n` non-overlapping (x, y, r) placements, one per cell of a 3x3 grid."""
    out = []
    for cell in rng.sample(range(9), n):
        r = rng.uniform(rmin, rmax)
        slack = 1 / 6 - r - 0.01
        x = (cell % 3 + 0.5) / 3 + rng.uniform(-slack, slack)
        y = (cell // 3 + 0.5) / 3 + rng.uniform(-slack, slack)
        out.append((x, y, r))
    return out


# ---------------------------------------------------------------- training scenes


def _single(rng: random.Random, bg: Background) -> tuple[list, list[dict], str, dict]:
    colour, shape = _colour_shape(rng, bg.colour)
    position = rng.choice(POSITIONS)
    posw = rng.choice(POSITION_PHRASES[position]) if rng.random() < 0.7 else ""
    alone = rng.random()
    position_alone = bool(posw) and alone < 0.35
    # Mostly large: at the demo's 32 px a small shape is a few pixels wide, too few to tell a circle from
    # a hexagon, so its caption would teach the shape words little. A caption naming the position alone
    # shows a small shape: a large one cannot move far from the centre (a shape of radius 0.28 stays
    # within 0.3-0.7), so its left, top and centre lie a few pixels apart.
    small = position_alone or rng.random() < 0.25
    r = rng.uniform(0.1, 0.155) if small else rng.uniform(0.18, 0.28)
    spec, obj = _at_position(rng, colour, shape, position, r)
    fields = noun_phrase(rng, obj, p_size=0.45)
    if position_alone:
        # Position alone: in a batch, colour and shape already tell most captions apart, so a caption
        # that says nothing else is what makes the position words carry meaning.
        noun = rng.choice(("shape", "object", "thing"))
        fields |= {"np": noun, "a_np": article(noun), "colour": "", "shape": ""}
    elif alone >= 0.5 and obj["size"] == "large":
        # Shape alone, for the same reason: with colour and position named, a caption rarely needs its
        # shape word to find its image, and the shape words stayed vague (circle, square and hexagon).
        caption = fill_template(rng, SHAPE_TEMPLATES, {"P": rng.choice(PREFIXES), "shape": shape})
        return [spec], [obj], caption, {}
    fields |= {
        "P": rng.choice(PREFIXES),
        "posw": posw,
        "pos": " " + posw if posw else "",
        "bg": background_phrase(rng, bg),
    }
    return [spec], [obj], fill_template(rng, SINGLE_TEMPLATES, fields), {}


def _lookalike(rng: random.Random, bg: Background) -> tuple[list, list[dict], str, dict]:
    """A large circle or hexagon named by its shape alone.

    The one pair of shapes a pixel apart at the demo's 32 px: a hexagon's flat sides lie 0.8-1.2 px
    inside a circle of the same radius. Shape-only singles draw the pair in only a quarter of their
    captions, too rarely for the image tower to learn the difference in the demo's 2,000 steps.
    """
    shape = rng.choice(LOOKALIKE_SHAPES)
    colour = rng.choice([c for c in _CONTRASTING[bg.colour] if (c, shape) not in _HELD_OUT])
    position = rng.choice(POSITIONS)
    spec, obj = _at_position(rng, colour, shape, position, rng.uniform(0.18, 0.28))
    return [spec], [obj], fill_template(rng, SHAPE_TEMPLATES, {"P": rng.choice(PREFIXES), "shape": shape}), {}


def _relation(rng: random.Random, bg: Background) -> tuple[list, list[dict], str, dict]:
    first = _colour_shape(rng, bg.colour)
    second = _colour_shape(rng, bg.colour, used=[first])
    ra, rb = (rng.uniform(0.1, 0.13) if rng.random() < 0.5 else rng.uniform(0.17, 0.2) for _ in range(2))
    xa, xb = rng.uniform(ra + 0.02, 0.5 - ra), rng.uniform(0.5 + rb, 0.98 - rb)
    ya = rng.uniform(max(ra, rb) + 0.02, 0.98 - max(ra, rb))
    yb = min(max(ya + rng.uniform(-0.12, 0.12), rb + 0.02), 0.98 - rb)
    vertical = rng.random() < 0.5
    if vertical:  # transpose: first is above second
        (xa, ya), (xb, yb) = (ya, xa), (yb, xb)
    sa, oa = _shape(rng, *first, xa, ya, ra)
    sb, ob = _shape(rng, *second, xb, yb, rb)
    relation = "above" if vertical else "left of"
    subj, obj = 0, 1
    if rng.random() < 0.5:  # say it the other way round
        subj, obj, relation = 1, 0, INVERSE[relation]
    objs = [oa, ob]
    fields = {
        "P": rng.choice(PREFIXES),
        "A": noun_phrase(rng, objs[subj], p_size=0.3)["a_np"],
        "B": noun_phrase(rng, objs[obj], p_size=0.3)["a_np"],
        "rel": rng.choice(RELATION_PHRASES[relation]),
        "bg": background_phrase(rng, bg),
    }
    extra = {"relation": {"subject": subj, "relation": relation, "object": obj}}
    return [sa, sb], objs, fill_template(rng, RELATION_TEMPLATES, fields), extra


def _count(rng: random.Random, bg: Background) -> tuple[list, list[dict], str, dict]:
    n = rng.randrange(1, len(COUNT_WORDS) + 1)
    colour, shape = _colour_shape(rng, bg.colour)
    placed = [_shape(rng, colour, shape, x, y, r) for x, y, r in _grid(rng, n, 0.075, 0.11)]
    objs = [o for _, o in placed]
    words = noun_phrase(rng, objs[0], plural=n > 1)
    if rng.random() < 0.35:
        # The number alone ("three shapes"): in a batch, colour and shape tell most count captions apart,
        # so the number words carry little unless some captions name nothing else (as with position).
        noun = rng.choice(("shape", "object"))
        words = {"np": PLURALS[noun] if n > 1 else noun}
    fields = {"P": rng.choice(PREFIXES), "N": COUNT_WORDS[n - 1], "bg": background_phrase(rng, bg)}
    fields |= {"nps": words["np"]} if n > 1 else {"np": words["np"]}
    caption = fill_template(rng, COUNT_TEMPLATES if n > 1 else COUNT_ONE_TEMPLATES, fields)
    return [s for s, _ in placed], objs, caption, {}


def _group(rng: random.Random, bg: Background) -> tuple[list, list[dict], str, dict]:
    n = rng.randrange(2, 4)
    pairs: list[tuple[str, str]] = []
    for _ in range(n):
        pairs.append(_colour_shape(rng, bg.colour, used=pairs))
    placed = [
        _shape(rng, c, s, x, y, r) for (c, s), (x, y, r) in zip(pairs, _grid(rng, n, 0.09, 0.13), strict=True)
    ]
    objs = [o for _, o in placed]
    names = [noun_phrase(rng, o)["a_np"] for o in objs]
    fields = {
        "P": rng.choice(PREFIXES),
        "N": COUNT_WORDS[n - 1],
        "LIST": ", ".join(names[:-1]) + " and " + names[-1],
        "FIRST": rng.choice(names),
        "bg": background_phrase(rng, bg),
    }
    return [s for s, _ in placed], objs, fill_template(rng, GROUP_TEMPLATES, fields), {}


def _text_spec(
    rng: random.Random, bg: Background, text: str, height: tuple[float, float], tilt: float
) -> TextSpec:
    font = rng.choice(tuple(FONT_FILES))
    colour = rng.choice(_CONTRASTING[bg.colour])
    x, y = rng.uniform(0.35, 0.65), rng.uniform(0.35, 0.65)
    return TextSpec(text, font, colour, x, y, rng.uniform(*height), rng.uniform(-tilt, tilt))


def _text(rng: random.Random, bg: Background, kind: str) -> tuple[list, list[dict], str, dict]:
    digit = kind == "digit"
    text = rng.choice(DIGITS if digit else WORDS)
    spec = _text_spec(rng, bg, text, (0.45, 0.75) if digit else (0.26, 0.4), 25.0)
    tilted = abs(spec.angle) >= 12
    fields = {
        "P": rng.choice(PREFIXES),
        "t": text,
        "colour": spec.colour,
        "col": f" in {spec.colour}" if rng.random() < 0.5 else "",
        "font": " " + rng.choice(FONT_PHRASES[spec.font]) if rng.random() < 0.3 else "",
        "tilt": " " + rng.choice(("tilted", "rotated", "at an angle"))
        if tilted and rng.random() < 0.5
        else "",
        "bg": background_phrase(rng, bg),
    }
    caption = fill_template(rng, DIGIT_TEMPLATES if digit else WORD_TEMPLATES, fields)
    info = {
        "text": text,
        "kind": kind,
        "font": spec.font,
        "colour": spec.colour,
        "angle": round(spec.angle, 2),
    }
    return [spec], [], caption, {"text": info}


def _glyph(rng: random.Random) -> tuple[Scene, str, dict]:
    digit = rng.choice(DIGITS)
    hand = rng.random() < 0.55
    light = rng.random() < 0.6  # dark ink on light paper, else a light stroke on a dark ground
    paper = rng.choice(LIGHT_PAPERS if light else DARK_PAPERS)
    ink = rng.choice(DARK_INKS if light else LIGHT_INKS)
    height = rng.uniform(0.45, 0.85)
    x, y = (0.5 + rng.uniform(-0.5, 0.5) * (1 - height) * 0.8 for _ in range(2))
    if hand:
        spec: StrokeSpec | TextSpec = StrokeSpec(
            handwritten_digit(rng, digit), ink, x, y, height, rng.uniform(0.07, 0.2)
        )
        font = None
    else:
        font = rng.choice(tuple(FONT_FILES))
        spec = TextSpec(digit, font, ink, x, y, height * 1.25, rng.uniform(-10.0, 10.0))
    low_res = rng.choice((0, 0, 0, 28, 24, 20, 16, 12, 10, 8))
    finish = Finish(
        low_res=low_res,
        blur=rng.choice((0.0, 0.0, 0.5, 0.8, 1.2)),
        noise=rng.choice((0.0, 0.0, 4.0, 10.0)),
        seed=rng.getrandbits(32),
    )
    on = rng.choice((f" on {paper}", f" in {ink}", f" in {ink} on {paper}")) if rng.random() < 0.35 else ""
    fields = {
        "P": rng.choice(PREFIXES),
        "t": digit if rng.random() < 0.8 else NUMBER_WORDS[int(digit)],
        "d": digit,
        "w": NUMBER_WORDS[int(digit)],
        "adj": rng.choice((GLYPH_HAND if hand else GLYPH_PRINT)[0]),
        "how": rng.choice((GLYPH_HAND if hand else GLYPH_PRINT)[1]),
        "on": on,
        "fuzzy": rng.choice(("blurry ", "low resolution ", "pixelated ", "fuzzy "))
        if low_res and low_res <= 16 and rng.random() < 0.4
        else "",
        "font": " " + rng.choice(FONT_PHRASES[font]) if font and rng.random() < 0.2 else "",
    }
    caption = fill_template(rng, GLYPH_TEMPLATES, fields)
    scene = Scene(
        Background(paper), texts=(spec,) if font else (), strokes=() if font else (spec,), finish=finish
    )
    attrs = {
        "kind": "glyph",
        "text": {"text": digit, "kind": "handwritten" if hand else "printed", "font": font, "colour": ink},
        "background": {"colour": paper, "pattern": "plain"},
        "objects": [],
        "count": 0,
    }
    return scene, caption, attrs


def sample_scene(seed: int, split: str, index: int) -> tuple[Scene, str, dict[str, Any]]:
    """The scene, caption and attributes of sample `index`, without drawing any pixels."""
    rng = make_rng(seed, split, index)
    kind = rng.choices([k for k, _ in KIND_WEIGHTS], weights=[w for _, w in KIND_WEIGHTS])[0]
    if kind == "glyph":
        return _glyph(rng)
    bg = _background(rng)
    if kind in ("digit", "word"):
        specs, objs, caption, extra = _text(rng, bg, kind)
    else:
        specs, objs, caption, extra = {
            "single": _single,
            "lookalike": _lookalike,
            "relation": _relation,
            "count": _count,
            "group": _group,
        }[kind](rng, bg)
    shapes = tuple(s for s in specs if isinstance(s, ShapeSpec))
    texts = tuple(s for s in specs if isinstance(s, TextSpec))
    attrs = {"kind": kind, "background": {"colour": bg.colour, "pattern": bg.pattern}, "objects": objs}
    attrs |= {"count": len(objs)} | extra
    return Scene(bg, shapes, texts), caption, attrs


class SyntheticCaptions:
    """Map-style dataset of `size` generated (image, caption) samples.

    Sample `i` depends only on (seed, split, i), so instances are cheap to build, pickle to workers
    and agree across processes. `split` only selects the random stream (e.g. "train", "val"); no
    split ever contains a colour-shape pair from `HELD_OUT_PAIRS`.
    """

    def __init__(self, size: int, seed: int = 0, image_size: int = 64, split: str = "train"):
        if size < 0:
            raise ValueError(f"SyntheticCaptions size must be >= 0, got {size}")
        if image_size < 16:
            raise ValueError(f"SyntheticCaptions image_size must be >= 16 pixels, got {image_size}")
        font_dir()  # fail here, in the caller's process, rather than in a DataLoader worker
        self.size, self.seed, self.image_size, self.split = size, seed, image_size, split

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> SyntheticSample:
        if index < 0:
            index += self.size
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for SyntheticCaptions of size {self.size}")
        scene, caption, attrs = sample_scene(self.seed, self.split, index)
        return SyntheticSample(render(scene, self.image_size), caption, attrs)

    def __repr__(self) -> str:
        return f"SyntheticCaptions(size={self.size}, seed={self.seed}, image_size={self.image_size}, split={self.split!r})"


# ---------------------------------------------------------------- zero-shot tasks


@dataclass
class ZeroShotTask:
    """An N-way classification: images, integer labels, and prompts built from class names."""

    name: str
    classnames: list[str]
    templates: list[str]
    images: list[Image.Image]
    labels: list[int]


def _eval_background(rng: random.Random, colour: str | None = None) -> Background:
    usable = [b for b in _EVAL_BACKGROUNDS if colour is None or colour in _CONTRASTING[b]]
    return Background(rng.choice(usable))


def _eval_object(
    rng: random.Random, colour: str | None, shape: str | None, where: str | None = None
) -> Scene:
    """One object on a plain background; unspecified colour/shape are drawn, avoiding held-out pairs."""
    while True:
        c, s = colour or rng.choice(COLOURS), shape or rng.choice(SHAPES)
        if (c, s) not in _HELD_OUT or (colour, shape) == (c, s):
            break
    bg = _eval_background(rng, c)
    if where is None:
        r = rng.uniform(0.18, 0.28)
        x, y = rng.uniform(0.42, 0.58), rng.uniform(0.42, 0.58)
    else:
        r = rng.uniform(0.1, 0.14)
        x, y = _position_xy(rng, where, r)
    return Scene(bg, (_shape(rng, c, s, x, y, r)[0],))


def _eval_count(rng: random.Random, n: int) -> Scene:
    bg = _eval_background(rng)
    colour, shape = _colour_shape(rng, bg.colour)
    return Scene(bg, tuple(_shape(rng, colour, shape, x, y, r)[0] for x, y, r in _grid(rng, n, 0.075, 0.11)))


def _eval_digit(rng: random.Random, digit: str) -> Scene:
    bg = _eval_background(rng)
    return Scene(bg, texts=(_text_spec(rng, bg, digit, (0.5, 0.75), 15.0),))


_TaskDef = tuple[list[str], list[str], Callable[[random.Random, int], Scene]]
_COMPOSITIONAL = [f"{c} {s}" for c, s in HELD_OUT_PAIRS]

TASKS: dict[str, _TaskDef] = {
    "colour": (
        list(COLOURS),
        ["a photo of a {} object.", "a {} shape.", "something {}.", "a shape colored {}.", "an object in {}."],
        lambda rng, k: _eval_object(rng, COLOURS[k], None),
    ),
    "shape": (
        list(SHAPES),
        ["a photo of a {}.", "a drawing of a {}.", "a {} shape.", "a {}.", "a colored {}."],
        lambda rng, k: _eval_object(rng, None, SHAPES[k]),
    ),
    "count": (
        list(COUNT_WORDS),
        ["a photo of {} objects.", "there are {} shapes.", "{} shapes.", "the image contains {} objects."],
        lambda rng, k: _eval_count(rng, k + 1),
    ),
    "position": (
        list(POSITIONS),
        ["a shape on the {} side.", "an object at the {} of the image.", "a small object in the {} part of the image.", "something at the {}."],
        lambda rng, k: _eval_object(rng, None, None, POSITIONS[k]),
    ),
    "digit": (
        list(DIGITS),
        ["the digit {}.", "the number {}.", "a picture of the number {}.", "the number {} written."],
        lambda rng, k: _eval_digit(rng, DIGITS[k]),
    ),
    "compositional": (
        _COMPOSITIONAL,
        ["a photo of a {}.", "a {}.", "a drawing of a {}.", "a {} shape.", "a {} on a plain background."],
        lambda rng, k: _eval_object(rng, *HELD_OUT_PAIRS[k]),
    ),
}  # fmt: skip


def zero_shot_tasks(
    image_size: int = 64, per_class: int = 20, seed: int = 0, names: Sequence[str] | None = None
) -> list[ZeroShotTask]:
    """Build the zero-shot tasks (`colour`, `shape`, `count`, `position`, `digit`, `compositional`).

    Images come from the "eval/<task>" streams: simple scenes showing one concept on a plain
    background. Labels cycle through the classes, `per_class` images each.
    """
    names = list(TASKS) if names is None else list(names)
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"unknown zero-shot task(s) {unknown}; available: {list(TASKS)}")
    tasks = []
    for name in names:
        classnames, templates, make_scene = TASKS[name]
        labels = [i % len(classnames) for i in range(per_class * len(classnames))]
        images = [
            render(make_scene(make_rng(seed, f"eval/{name}", i), k), image_size) for i, k in enumerate(labels)
        ]
        tasks.append(ZeroShotTask(name, list(classnames), list(templates), images, labels))
    return tasks
