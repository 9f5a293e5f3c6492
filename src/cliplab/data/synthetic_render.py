"""Rendering for the synthetic dataset: scenes into pixels, attributes into caption words.

A scene is plain data (a `Scene` of `ShapeSpec`, `TextSpec` and a `Background`, all in unit
coordinates where the image spans [0, 1] x [0, 1]); `render` draws it at 2-4x the requested size and
box-filters down, which antialiases edges without any per-primitive antialiasing support in Pillow.
Fonts are the DejaVu files bundled with matplotlib (found, never imported), loaded with Pillow's basic
layout engine, so the same scene gives the same pixels on every machine with the same Pillow version.

The second half holds the phrase tables and caption templates; `fill_template` picks a template
whose required slots the caller could fill, so a caption names only what was chosen to be said.
"""

from __future__ import annotations

import importlib.util
import math
import random
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from cliplab.errors import UsageError

RGB = tuple[int, int, int]

# Object colours: far apart in RGB so a 64 px image leaves no doubt which word applies.
OBJECT_COLOURS: dict[str, RGB] = {
    "red": (220, 38, 38),
    "green": (34, 170, 60),
    "blue": (37, 90, 230),
    "yellow": (245, 215, 30),
    "purple": (140, 60, 200),
    "orange": (245, 135, 20),
    "white": (245, 245, 245),
    "black": (18, 18, 18),
}

# Background colours are darker or greyer than object colours so objects stand out.
BACKGROUND_COLOURS: dict[str, RGB] = {
    "white": (232, 232, 228),
    "gray": (128, 128, 128),
    "black": (28, 28, 30),
    "blue": (28, 42, 105),
    "green": (28, 80, 42),
}

# Plain grounds for digits written or printed on their own (documents, slates, scans).
PAPER_COLOURS: dict[str, RGB] = {
    "white paper": (246, 245, 240),
    "cream paper": (238, 228, 200),
    "gray paper": (196, 196, 192),
    "black": (6, 6, 6),
    "dark blue": (20, 26, 60),
    "dark gray": (48, 48, 52),
}
LIGHT_PAPERS = ("white paper", "cream paper", "gray paper")
DARK_PAPERS = ("black", "dark blue", "dark gray")

# Inks and chalks for those digits; the caption word for each is its key.
INK_COLOURS: dict[str, RGB] = {
    "black ink": (16, 16, 20),
    "pencil": (84, 84, 90),
    "blue ink": (28, 48, 150),
    "red ink": (170, 30, 30),
    "white chalk": (244, 244, 244),
    "yellow chalk": (240, 220, 120),
    "light gray": (190, 190, 190),
}
DARK_INKS = ("black ink", "pencil", "blue ink", "red ink")
LIGHT_INKS = ("white chalk", "yellow chalk", "light gray")

PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted", "gradient")

# Training typefaces: key -> file under matplotlib's mpl-data/fonts/ttf. The DejaVu and STIX
# families only; the Computer Modern files beside them (TRANSFER_FONT_FILES) are kept for the
# printed-digits transfer evaluation and never drawn by the training generator.
FONT_FILES: dict[str, str] = {
    "sans": "DejaVuSans.ttf",
    "bold": "DejaVuSans-Bold.ttf",
    "italic": "DejaVuSans-Oblique.ttf",
    "bold-italic": "DejaVuSans-BoldOblique.ttf",
    "serif": "DejaVuSerif.ttf",
    "serif-bold": "DejaVuSerif-Bold.ttf",
    "serif-italic": "DejaVuSerif-Italic.ttf",
    "serif-bold-italic": "DejaVuSerif-BoldItalic.ttf",
    "mono": "DejaVuSansMono.ttf",
    "mono-bold": "DejaVuSansMono-Bold.ttf",
    "mono-italic": "DejaVuSansMono-Oblique.ttf",
    "times": "STIXGeneral.ttf",
    "times-bold": "STIXGeneralBol.ttf",
    "times-italic": "STIXGeneralItalic.ttf",
    "times-bold-italic": "STIXGeneralBolIta.ttf",
}
TRANSFER_FONT_FILES: dict[str, str] = {
    "cm-roman": "cmr10.ttf",
    "cm-bold": "cmb10.ttf",
    "cm-sans": "cmss10.ttf",
    "cm-italic": "cmti10.ttf",
    "cm-typewriter": "cmtt10.ttf",
}

MIN_CONTRAST = 95.0  # RGB distance below which an object would blend into its background


@dataclass(frozen=True)
class Background:
    colour: str
    pattern: str = "plain"
    direction: int = 0  # 0 horizontal, 1 vertical, 2 diagonal (stripes and gradients)
    period: float = 0.125  # stripe/dot spacing as a fraction of the image


@dataclass(frozen=True)
class ShapeSpec:
    shape: str
    colour: str
    x: float  # centre, unit coordinates
    y: float
    r: float  # half-extent as a fraction of the image side
    angle: float = 0.0  # degrees, counter-clockwise


@dataclass(frozen=True)
class TextSpec:
    text: str
    font: str
    colour: str
    x: float
    y: float
    height: float  # font size as a fraction of the image side
    angle: float = 0.0


@dataclass(frozen=True)
class StrokeSpec:
    """Pen strokes (as from :func:`cliplab.data.glyphs.handwritten_digit`) placed in the image."""

    strokes: tuple[tuple[tuple[float, float], ...], ...]  # points in a unit box, y downwards
    colour: str
    x: float  # centre of the box, unit coordinates
    y: float
    height: float  # box side as a fraction of the image side
    width: float  # pen width as a fraction of `height`


@dataclass(frozen=True)
class Finish:
    """What a camera or scanner does after drawing: a low-resolution round trip, blur and noise."""

    low_res: int = 0  # pixels per side to shrink to and enlarge back from (0: none)
    blur: float = 0.0  # Gaussian radius in output pixels
    noise: float = 0.0  # standard deviation of per-pixel noise, in 0-255 units
    seed: int = 0


@dataclass(frozen=True)
class Scene:
    background: Background
    shapes: tuple[ShapeSpec, ...] = ()
    texts: tuple[TextSpec, ...] = field(default_factory=tuple)
    strokes: tuple[StrokeSpec, ...] = ()
    finish: Finish | None = None


def _regular(n: int, radius: float, phase: float) -> list[tuple[float, float]]:
    return [
        (radius * math.cos(phase + 2 * math.pi * k / n), radius * math.sin(phase + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _star() -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        rad = 1.08 if k % 2 == 0 else 0.44
        a = -math.pi / 2 + math.pi * k / 5
        pts.append((rad * math.cos(a), rad * math.sin(a) + 0.08))
    return pts


def _heart() -> list[tuple[float, float]]:
    pts = []
    for k in range(48):
        t = 2 * math.pi * k / 48
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((x / 16.5, -(y + 2.5) / 15.5))  # image y grows downwards
    return pts


def _cross(arm: float = 1.0, half: float = 0.34) -> list[tuple[float, float]]:
    a, h = arm, half
    return [
        (-h, -a),
        (h, -a),
        (h, -h),
        (a, -h),
        (a, h),
        (h, h),
        (h, a),
        (-h, a),
        (-h, h),
        (-a, h),
        (-a, -h),
        (-h, -h),
    ]


# Unit outlines, each roughly filling [-1, 1]^2 so one radius means one visual size for every shape.
# The circle is drawn as an ellipse, not a polygon.
SHAPE_OUTLINES: dict[str, list[tuple[float, float]]] = {
    "circle": [],
    "square": [(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)],
    "triangle": [(x, y + 0.22) for x, y in _regular(3, 1.18, -math.pi / 2)],
    "star": _star(),
    "hexagon": _regular(6, 1.0, 0.0),
    "diamond": [(0.0, -1.08), (0.72, 0.0), (0.0, 1.08), (-0.72, 0.0)],
    "cross": _cross(),
    "heart": _heart(),
}


def contrast(colour: RGB, background: str) -> float:
    """Smallest RGB distance between `colour` and either tone of the named background."""
    return min(math.dist(colour, tone) for tone in _background_tones(background))


def colour_rgb(name: str) -> RGB:
    """RGB of an object colour, ink or paper name."""
    rgb = OBJECT_COLOURS.get(name) or INK_COLOURS.get(name) or PAPER_COLOURS.get(name)
    if rgb is None:
        raise ValueError(f"unknown colour {name!r}")
    return rgb


def _background_tones(name: str) -> tuple[RGB, RGB]:
    base = BACKGROUND_COLOURS.get(name) or PAPER_COLOURS[name]
    # Patterns use a second tone of the same colour, so the background keeps a single colour name.
    target = 0 if sum(base) > 3 * 128 else 255
    second = tuple(round(c + 0.22 * (target - c)) for c in base)
    return base, second  # type: ignore[return-value]


def font_dir() -> Path:
    """Folder holding matplotlib's bundled DejaVu fonts (found without importing matplotlib).

    matplotlib is an optional dependency (the ``train`` extra): the core package never needs it.
    """
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(
            "the synthetic dataset draws text with the DejaVu fonts bundled in matplotlib, which is not "
            "installed: pip install 'cliplab[train]'"
        )
    return Path(spec.submodule_search_locations[0]) / "mpl-data" / "fonts" / "ttf"


@lru_cache(maxsize=4096)
def _font(name: str, px: int) -> ImageFont.FreeTypeFont:
    path = font_dir() / (FONT_FILES.get(name) or TRANSFER_FONT_FILES[name])
    if not path.is_file():
        raise UsageError(
            f"font {path} is missing from matplotlib; reinstall it: pip install --force-reinstall matplotlib"
        )
    # The basic layout engine behaves the same whether or not libraqm is installed.
    return ImageFont.truetype(str(path), px, layout_engine=ImageFont.Layout.BASIC)


def supersample_factor(image_size: int) -> int:
    """How many times larger than `image_size` scenes are drawn before downsampling."""
    return 4 if image_size <= 96 else 3 if image_size <= 160 else 2


def render(scene: Scene, image_size: int) -> Image.Image:
    """Draw `scene` as an RGB image of `image_size` x `image_size` pixels."""
    k = supersample_factor(image_size)
    side = image_size * k
    img = _draw_background(scene.background, side)
    draw = ImageDraw.Draw(img)
    for spec in scene.shapes:
        _draw_shape(draw, spec, side)
    for spec in scene.texts:
        _draw_text(img, spec, side)
    for spec in scene.strokes:
        _draw_strokes(draw, spec, side)
    img = img.reduce(k)
    return _apply_finish(img, scene.finish) if scene.finish else img


def _draw_strokes(draw: ImageDraw.ImageDraw, spec: StrokeSpec, side: int) -> None:
    colour = colour_rgb(spec.colour)
    h = spec.height * side
    pen = max(1.0, spec.width * h)
    x0, y0 = spec.x * side - h / 2, spec.y * side - h / 2
    for stroke in spec.strokes:
        pts = [(x0 + x * h, y0 + y * h) for x, y in stroke]
        draw.line(pts, fill=colour, width=round(pen), joint="curve")
        for x, y in (pts[0], pts[-1]):  # round pen ends
            draw.ellipse((x - pen / 2, y - pen / 2, x + pen / 2, y + pen / 2), fill=colour)


def _apply_finish(img: Image.Image, finish: Finish) -> Image.Image:
    if finish.low_res:
        img = img.resize((finish.low_res,) * 2, Image.Resampling.BOX).resize(
            img.size, Image.Resampling.BILINEAR
        )
    if finish.blur:
        img = img.filter(ImageFilter.GaussianBlur(finish.blur))
    if finish.noise:
        noise = np.random.default_rng(finish.seed).normal(0.0, finish.noise, (img.height, img.width, 1))
        img = Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8))
    return img


def _draw_background(bg: Background, side: int) -> Image.Image:
    base, second = _background_tones(bg.colour)
    if bg.pattern == "gradient":
        return _gradient(base, second, bg.direction, side)
    img = Image.new("RGB", (side, side), base)
    if bg.pattern == "plain":
        return img
    draw = ImageDraw.Draw(img)
    step = max(4.0, bg.period * side)
    n = int(side / step) + 2
    if bg.pattern == "striped":
        w = step / 2
        for i in range(-n, n):
            s = i * step
            if bg.direction == 0:
                draw.rectangle((0, s, side, s + w - 1), fill=second)
            elif bg.direction == 1:
                draw.rectangle((s, 0, s + w - 1, side), fill=second)
            else:
                draw.polygon([(s, 0), (s + w, 0), (s + w - side, side), (s - side, side)], fill=second)
                draw.polygon([(s + side, 0), (s + side + w, 0), (s + w, side), (s, side)], fill=second)
    elif bg.pattern == "dotted":
        rad = step * 0.22
        for i in range(n):
            for j in range(n):
                cx = (i + 0.5 * (j % 2)) * step
                cy = (j + 0.5) * step
                draw.ellipse((cx - rad, cy - rad, cx + rad, cy + rad), fill=second)
    else:
        raise ValueError(f"unknown background pattern {bg.pattern!r}; expected one of {PATTERNS}")
    return img


def _gradient(a: RGB, b: RGB, direction: int, side: int) -> Image.Image:
    # Colours depend on one index (row, column, or row + column), so build that 1-D ramp once and
    # index it, rather than interpolating every pixel in float.
    steps = side if direction < 2 else 2 * side - 1
    t = np.linspace(0.0, 1.0, steps)[:, None]
    ramp = np.rint(np.asarray(a) + t * (np.asarray(b) - np.asarray(a))).astype(np.uint8)
    idx = np.arange(side)
    if direction == 0:
        pix = np.broadcast_to(ramp[:, None, :], (side, side, 3))
    elif direction == 1:
        pix = np.broadcast_to(ramp[None, :, :], (side, side, 3))
    else:
        pix = ramp[idx[:, None] + idx[None, :]]
    return Image.fromarray(np.ascontiguousarray(pix), "RGB")


def _draw_shape(draw: ImageDraw.ImageDraw, spec: ShapeSpec, side: int) -> None:
    colour = OBJECT_COLOURS[spec.colour]
    cx, cy, r = spec.x * side, spec.y * side, spec.r * side
    if spec.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        return
    outline = SHAPE_OUTLINES.get(spec.shape)
    if outline is None:
        raise ValueError(f"unknown shape {spec.shape!r}; expected one of {sorted(SHAPE_OUTLINES)}")
    ca, sa = math.cos(math.radians(spec.angle)), math.sin(math.radians(spec.angle))
    pts = [(cx + r * (x * ca + y * sa), cy + r * (-x * sa + y * ca)) for x, y in outline]
    draw.polygon(pts, fill=colour)


def _text_mask(spec: TextSpec, side: int) -> Image.Image:
    px = max(6, round(spec.height * side))
    font = _font(spec.font, px)
    left, top, right, bottom = font.getbbox(spec.text)
    pad = 2
    mask = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(mask).text((pad - left, pad - top), spec.text, fill=255, font=font)
    if spec.angle:
        mask = mask.rotate(spec.angle, resample=Image.Resampling.BICUBIC, expand=True)
    return mask


def _draw_text(img: Image.Image, spec: TextSpec, side: int) -> None:
    mask = _text_mask(spec, side)
    limit = 0.92 * side
    if max(mask.size) > limit:  # too big to fit once rotated: shrink the font and draw again
        scale = limit / max(mask.size)
        mask = _text_mask(TextSpec(**{**spec.__dict__, "height": spec.height * scale}), side)
    w, h = mask.size
    # Keep the whole glyph box inside the image, moving the centre as little as needed.
    x0 = round(min(max(spec.x * side - w / 2, 0), side - w))
    y0 = round(min(max(spec.y * side - h / 2, 0), side - h))
    img.paste(colour_rgb(spec.colour), (x0, y0, x0 + w, y0 + h), mask)


# ---------------------------------------------------------------- words
# Phrase tables and helpers that turn scene attributes into caption text.

PLURALS = {s: s + "s" for s in (*SHAPE_OUTLINES, "shape", "object")} | {"cross": "crosses"}
PREFIXES = (
    "", "", "", "a photo of ", "an image of ", "a picture of ", "a drawing of ", "an illustration of ",
    "a rendering of ", "a simple graphic of ", "a clip art of ", "a synthetic image of ",
    "this image shows ", "here we see ", "a cartoon of ", "a diagram of ", "a tiny picture of ",
)  # fmt: skip
POSITION_PHRASES = {
    "left": ("on the left", "at the left", "on the left side", "in the left part of the image"),
    "right": ("on the right", "at the right", "on the right side", "in the right part of the image"),
    "top": ("at the top", "near the top", "on the top side", "in the top part of the image"),
    "bottom": ("at the bottom", "near the bottom", "on the bottom side", "in the bottom part of the image"),
    "center": ("in the center", "at the center", "in the center of the image", "in the middle"),
}
RELATION_PHRASES = {
    "left of": ("to the left of", "left of", "on the left of"),
    "right of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
PATTERN_WORDS = {
    "plain": ("plain",),
    "striped": ("striped",),
    "dotted": ("dotted",),
    "gradient": ("gradient", "fading"),
}
FONT_PHRASES = {
    "sans": ("in a sans font", "in regular letters"),
    "bold": ("in bold", "in bold letters"),
    "italic": ("in italics", "in slanted letters"),
    "bold-italic": ("in bold italics",),
    "serif": ("in a serif font",),
    "serif-bold": ("in a bold serif font",),
    "serif-italic": ("in serif italics",),
    "serif-bold-italic": ("in bold serif italics",),
    "mono": ("in a monospace font", "in a typewriter font"),
    "mono-bold": ("in a bold monospace font",),
    "mono-italic": ("in slanted typewriter letters",),
    "times": ("in a book font", "in a serif font"),
    "times-bold": ("in a bold book font",),
    "times-italic": ("in book italics",),
    "times-bold-italic": ("in bold book italics",),
}

SINGLE_TEMPLATES = (
    "{P}{a_np}{pos}{bg}.", "{P}{a_np}{bg}{pos}.", "{a_np}{pos}{bg}", "the {np} is {posw}.",
    "{P}a {shape} colored {colour}{pos}{bg}.", "{P}a {shape} in {colour}{pos}{bg}.",
    "{posw}: {a_np}.", "{P}one {np}{pos}{bg}.", "{P}a single {np}{pos}.", "the only object is {a_np}{pos}.",
)  # fmt: skip
# A single shape named by its shape alone.
SHAPE_TEMPLATES = (
    "{P}a {shape}.", "{P}a {shape} shape.", "{shape}", "the shape is a {shape}.", "{P}a {shape}-shaped object.",
    "{P}a single {shape}.", "the only object is a {shape}.", "one {shape}.",
)  # fmt: skip
RELATION_TEMPLATES = (
    "{P}{A} {rel} {B}{bg}.", "{A} {rel} {B}.", "{A} is {rel} {B}{bg}.", "{P}two shapes: {A} {rel} {B}.",
    "{P}two objects, {A} {rel} {B}.", "{P}{A} placed {rel} {B}{bg}.", "there is {A} {rel} {B}.",
)  # fmt: skip
COUNT_TEMPLATES = (
    "{N} {nps}{bg}.", "{P}{N} {nps}{bg}.", "there are {N} {nps}{bg}.", "a group of {N} {nps}.",
    "exactly {N} {nps}{bg}.", "{N} {nps} scattered around{bg}.", "the image contains {N} {nps}{bg}.",
)  # fmt: skip
COUNT_ONE_TEMPLATES = (
    "one {np}{bg}.", "{P}one {np}{bg}.", "there is one {np}{bg}.", "a single {np}{bg}.",
    "exactly one {np}.", "the image contains one {np}{bg}.",
)  # fmt: skip
GROUP_TEMPLATES = (
    "{P}{LIST}{bg}.", "{LIST}.", "{N} shapes: {LIST}.", "{N} objects{bg}: {LIST}.",
    "there are {N} shapes, {LIST}.", "{P}{FIRST} and other shapes{bg}.", "{P}{N} shapes including {FIRST}.",
)  # fmt: skip
DIGIT_TEMPLATES = (
    "the digit {t}{col}{font}{bg}.", "the number {t}{col}{font}{bg}.", "{P}the digit {t}{col}{bg}.",
    "{P}a {colour} {t}{bg}.", "{P}the number {t} written{col}{font}{bg}.", "a {t} written{col}{font}{tilt}.",
    "the digit {t}{tilt}{bg}.", "{t}{col}{bg}.",
)  # fmt: skip
WORD_TEMPLATES = (
    "the word {t}{col}{font}{bg}.", '{P}the word "{t}"{col}{bg}.', "{P}the text {t} written{col}{font}.",
    "a sign that says {t}{col}{bg}.", "{t} written in {colour} letters{bg}.", "the word {t}{tilt}.",
)  # fmt: skip
# Digits alone ("glyph" scenes): {t} is the digit or its word, {d} always the digit, {w} the word.
# {adj} goes before the digit, {how} after it.
GLYPH_HAND = (
    ("handwritten", "hand-written", "hand-drawn", "scribbled"),
    ("written by hand", "in handwriting", "handwritten"),
)
GLYPH_PRINT = (("printed", "typed", "typeset"), ("in print", "printed", "typed"))
GLYPH_TEMPLATES = (
    "{P}the digit {d}{on}.", "{P}the number {t}{on}.", "{P}a {t}{on}.", "{P}a {fuzzy}{d}.", "{d}",
    "{P}a {adj} {d}{on}.", "{P}the {adj} digit {d}{font}.", "{P}the number {w}{on}.", "the digit {d}, {how}.",
    "{P}a {fuzzy}picture of the number {d}.", "a {d} {how}{on}.", "{P}the number {d} ({w}){font}.",
)  # fmt: skip
OPTIONAL_FIELDS = frozenset({"P", "pos", "bg", "col", "font", "tilt", "on", "fuzzy"})


def article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


@cache
def _fields_of(template: str) -> tuple[str, ...]:
    return tuple(name for _, name, _, _ in string.Formatter().parse(template) if name)


def fill_template(rng: random.Random, templates: Sequence[str], fields: dict[str, str]) -> str:
    """Pick a template whose required fields are all present, and fill it."""
    usable = [t for t in templates if all(fields.get(f) or f in OPTIONAL_FIELDS for f in _fields_of(t))]
    return rng.choice(usable).format(**fields)


# Shapes that look alike when small: a small one is named by colour and a generic noun ("a small red
# shape"), so the shape words are only used where the picture shows the difference.
LOOKALIKE_SHAPES: tuple[str, ...] = ("circle", "hexagon")


def noun_phrase(rng: random.Random, obj: dict, p_size: float = 0.0, plural: bool = False) -> dict[str, str]:
    """Noun phrase naming a random subset of an object's attributes, plus the parts it used."""
    # A few pixels wide, a hexagon looks like a circle: name only what can be seen.
    vague = obj["size"] == "small" and obj["shape"] in LOOKALIKE_SHAPES
    colour = obj["colour"] if rng.random() < 0.85 or vague else ""
    shape = obj["shape"] if (rng.random() < 0.85 or not colour) and not vague else ""
    size = obj["size"] if rng.random() < p_size else ""
    noun = shape or rng.choice(("shape", "object"))
    np = " ".join(w for w in (size, colour, PLURALS[noun] if plural else noun) if w)
    return {"np": np, "a_np": article(np), "colour": colour, "shape": shape, "size": size}


def background_phrase(rng: random.Random, bg: Background, p: float = 0.3) -> str:
    if rng.random() >= p:
        return ""
    pattern = rng.choice(PATTERN_WORDS[bg.pattern]) + " " if rng.random() < 0.7 else ""
    prep = rng.choice(("on", "against", "over", "with"))
    return f" {prep} a {pattern}{bg.colour} background"
