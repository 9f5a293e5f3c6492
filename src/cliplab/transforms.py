"""Image preprocessing: OpenAI CLIP's eval transform and CLIP's training augmentation.

The eval transform reproduces, for PIL input, what OpenAI's ``clip.load`` returns as ``preprocess``
(torchvision ``Resize(n, BICUBIC)``, ``CenterCrop(n)``, RGB conversion, ``ToTensor()``,
``Normalize(OPENAI_MEAN, OPENAI_STD)``, in that order) with Pillow, numpy and torch only. Each step
follows torchvision's rule for PIL images:

* Resize with an int scales the short side to ``n`` and the long side to ``int(n * long / short)``
  (truncated), with ``PIL.Image.resize(size, BICUBIC)``: Pillow always antialiases and torchvision
  passes no ``reducing_gap``. An image already at the target size is not resampled.
* CenterCrop offsets are ``int(round((h - n) / 2.0))``; an image smaller than the crop is first
  padded with zeros (in the image's own mode), split as torchvision splits it.
* The RGB conversion happens after the crop, on whatever mode Pillow kept through resize and crop,
  so every mode gets Pillow's own ``convert("RGB")``. That includes Pillow's quirks: 16-bit and
  32-bit integer images and float images are clipped to 0..255, not rescaled, so a 16-bit photo
  comes out nearly white, exactly as it does through torchvision.

Deliberate deviations, only where the reference crashes or would allocate absurd memory:

* Mode ``La`` (premultiplied L+alpha): Pillow cannot convert it to RGB, so torchvision raises
  ``ValueError``. Here it is unpremultiplied to ``LA`` first, as Pillow does itself for ``RGBa``.
* If the resized image would exceed ``EXACT_RESIZE_MAX_PIXELS`` (a 1x2000 image becomes 224x448000,
  100M pixels; a 1x1,000,000 one would need 224M x 224), only the centre window is resampled with
  Pillow's ``box`` argument. Values then differ slightly from torchvision (a few grey levels on
  smooth content, more on pixel-level noise).
* ``resize_mode="longest"`` follows open_clip, except that a side rounding to 0 pixels (open_clip
  raises for a 1x2000 image) is kept at 1.
"""

from __future__ import annotations

import functools
import io
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from .errors import CliplabError

if TYPE_CHECKING:  # imported where used: the ONNX encoder (cliplab.onnx) preprocesses without torch
    import torch

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
# open_clip's names. "shortest": OpenAI's resize-short-side-then-centre-crop. "longest": long side
# to n, then zero-pad to n x n. "squash": straight to n x n, aspect ratio not kept.
RESIZE_MODES = ("shortest", "longest", "squash")

# Above this many pixels in the intermediate resized image, resample only the crop window (see the
# module docstring). 2**28 pixels is about 1 GiB in Pillow's 4-bytes-per-pixel RGB storage.
EXACT_RESIZE_MAX_PIXELS = 1 << 28


class ImageLoadError(CliplabError, ValueError):
    """An image file could not be decoded; the message names the file and what to do."""


@dataclass(frozen=True)
class PreprocessConfig:
    """How images become model input: output side, normalisation and resize rule.

    Round-trips through JSON with ``to_dict`` / ``from_dict``, so checkpoints can carry it.
    """

    image_size: int = 224
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    def __post_init__(self) -> None:
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 1:
            raise ValueError(f"PreprocessConfig.image_size must be a positive int, got {self.image_size!r}")
        # JSON gives lists; store tuples of floats so configs compare and hash equal after a round trip.
        object.__setattr__(self, "mean", _three_floats("mean", self.mean))
        object.__setattr__(self, "std", _three_floats("std", self.std))
        if any(s <= 0 for s in self.std):
            raise ValueError(f"PreprocessConfig.std must be positive (it divides), got {self.std}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"PreprocessConfig.interpolation={self.interpolation!r} is unknown; use one of {sorted(INTERPOLATIONS)}"
            )
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(
                f"PreprocessConfig.resize_mode={self.resize_mode!r} is unknown; use one of {list(RESIZE_MODES)}"
            )

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (tuples become lists)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessConfig:
        """Build from a dict as written by ``to_dict``; unknown keys are an error, missing ones default."""
        if not isinstance(d, dict):
            raise TypeError(f"PreprocessConfig.from_dict expects a dict, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown PreprocessConfig key(s) {unknown}; allowed keys are {sorted(known)}")
        return cls(**d)


def _three_floats(name: str, value) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"PreprocessConfig.{name} must be 3 numbers (R, G, B), got {value!r}") from None
    if len(out) != 3 or not all(math.isfinite(v) for v in out):
        raise ValueError(f"PreprocessConfig.{name} must be 3 finite numbers (R, G, B), got {value!r}")
    return out


# ---------------------------------------------------------------------------------------------
# Loading


def load_image(
    source: str | os.PathLike | bytes, exif_transpose: bool = False, *, name: str | None = None
) -> Image.Image:
    """Fully decode an image file or encoded image bytes, raising ``ImageLoadError`` if unreadable.

    ``source`` is a path or the bytes of an encoded image (a tar member, a download); ``name``
    says where the bytes came from in messages (``shard.tar:key``) and defaults to the path.
    This is the one decoder cliplab uses, so every source gets the same guard: images over
    ``PIL.Image.MAX_IMAGE_PIXELS`` are refused before their pixels are decoded (Pillow itself only
    warns below twice that), since a data pipeline should not spend gigabytes on one suspicious
    image. No EXIF rotation is applied unless ``exif_transpose=True``, matching OpenAI's
    preprocessing.
    """
    img, _ = _decode(source, name)
    if exif_transpose:
        name = _source_name(source, name)
        try:
            img = ImageOps.exif_transpose(img)
        except Exception as exc:
            raise ImageLoadError(
                f"cannot apply the EXIF orientation of {name} ({type(exc).__name__}: {exc}); "
                "load it with exif_transpose=False or fix its EXIF data."
            ) from exc
    return img


def _source_name(source: str | os.PathLike | bytes, name: str | None) -> str:
    if name:
        return name
    return "<image bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else os.fspath(source)


def _decode(
    source: str | os.PathLike | bytes,
    name: str | None,
    reduction: Callable[[int, int], int] | None = None,
) -> tuple[Image.Image, int]:
    """(decoded image, JPEG reduction factor applied): :func:`load_image`'s decoder and guard.

    ``reduction`` (train path only) is called with the header's (width, height) before any pixel
    is decoded and returns the wanted factor (1, 2, 4 or 8); a JPEG is then decoded at that
    scale by the IDCT (``Image.draft``), to ``ceil(side / factor)`` pixels. Pillow applies it only
    to JPEGs, so the factor returned is the one Pillow actually used (1 for every other format).
    """
    name = _source_name(source, name)
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else os.fspath(source)
    factor = 1
    try:
        with Image.open(fp) as img:
            _check_pixel_count(img, name)
            if reduction is not None:
                factor = _draft(img, reduction(*img.size))
            img.load()
    except ImageLoadError:
        raise
    except FileNotFoundError:
        raise ImageLoadError(f"image file {name} does not exist; check the path or the manifest") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageLoadError(
            f"{name}: {exc} Raise PIL.Image.MAX_IMAGE_PIXELS if you trust this image."
        ) from exc
    except Exception as exc:
        # Pillow's decoders raise many types on corrupt data (OSError, SyntaxError, struct.error,
        # EOFError, ValueError...); a loader must turn all of them into one catchable error.
        raise ImageLoadError(
            f"cannot decode image {name} ({type(exc).__name__}: {exc}); it is not an image, is "
            "truncated or is corrupt. Re-download or re-encode it, or remove it from the dataset."
        ) from exc
    return img, factor


def _draft(img: Image.Image, factor: int) -> int:
    """Ask Pillow to decode ``img`` (not yet loaded) ``factor`` times smaller; the factor it applied."""
    if factor <= 1 or img.format != "JPEG":
        return 1
    w, h = img.size
    # Pillow picks the largest of 8, 4, 2, 1 that is <= min(w // size_w, h // size_h); with
    # size = side // factor that is exactly ``factor`` (both quotients are >= factor, and below 2 * factor).
    drafted = img.draft(img.mode, (max(1, w // factor), max(1, h // factor)))
    if drafted is None:  # several tiles, or drafted already: decoded at full size
        return 1
    _, box = drafted  # the full image's extent in the reduced image: (0, 0, w / scale, h / scale)
    return round(w / box[2])


def _check_pixel_count(img: Image.Image, name: str) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    w, h = img.size
    if limit is not None and w * h > limit:
        raise ImageLoadError(
            f"{name}: {w}x{h} = {w * h} pixels is over PIL.Image.MAX_IMAGE_PIXELS ({limit}), "
            "Pillow's guard against decompression bombs. Raise that limit if you trust this image."
        )


# ---------------------------------------------------------------------------------------------
# Steps, each following torchvision's rule for PIL images


def shortest_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after torchvision's ``Resize(size)``: short side to size, long side truncated."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


def longest_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) with the long side at size, as open_clip's ``resize_mode="longest"``.

    Both sides are divided by ``max(side / size)`` and rounded; a side that would round to 0
    is kept at 1 pixel so Pillow can resize it.
    """
    ratio = max(width / size, height / size)
    return max(1, round(width / ratio)), max(1, round(height / ratio))


def resize(img: Image.Image, size: tuple[int, int], interpolation: str = "bicubic") -> Image.Image:
    """Resize to (width, height); like torchvision, an image already that size is returned as is."""
    if img.size == tuple(size):
        return img
    return img.resize(tuple(size), INTERPOLATIONS[interpolation])


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """torchvision's ``CenterCrop(size)`` for PIL: zero-pad when smaller, then round the offsets."""
    width, height = img.size
    if size > width or size > height:
        img = _pad_zeros(img, size)
        width, height = img.size
        if (width, height) == (size, size):
            return img
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def _pad_zeros(img: Image.Image, size: int) -> Image.Image:
    # torchvision puts the odd pixel on the right/bottom and fills with 0 in the image's own
    # mode (a palette image gets index 0, a CMYK image (0,0,0,0), which is white).
    width, height = img.size
    pad_w, pad_h = max(size - width, 0), max(size - height, 0)
    bands = len(img.getbands())
    fill = 0.0 if img.mode == "F" else (0 if bands == 1 else (0,) * bands)
    out = Image.new(img.mode, (width + pad_w, height + pad_h), fill)
    if img.mode in ("P", "PA"):
        out.putpalette(img.getpalette())
    out.paste(img, (pad_w // 2, pad_h // 2))
    return out


def resize_center_crop(img: Image.Image, size: int, interpolation: str = "bicubic") -> Image.Image:
    """OpenAI's ``Resize(size)`` then ``CenterCrop(size)``, without a giant intermediate image.

    Where Pillow's resampling is two separable passes (see :func:`_split_resize_center_crop`),
    only the part of each pass that the crop keeps is computed, with the same pixels as out.
    """
    new_w, new_h = shortest_side_size(*img.size, size)
    if new_w * new_h <= EXACT_RESIZE_MAX_PIXELS:
        if _can_split(img, (new_w, new_h), interpolation):
            return _split_resize_center_crop(img, (new_w, new_h), size, interpolation)
        return center_crop(resize(img, (new_w, new_h), interpolation), size)
    # Extreme aspect ratio: resample only the window the crop keeps (inexact, see module docstring).
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    sx, sy = img.width / new_w, img.height / new_h
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return img.resize((size, size), INTERPOLATIONS[interpolation], box=box)


# Pillow's filter supports (``src/libImaging/Resample.c``), for the rows a crop reads. NEAREST is
# not a separable convolution in Pillow (it goes through an affine transform), so it is left out.
_FILTER_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0, "lanczos": 3.0, "box": 0.5, "hamming": 1.0}
# Modes that Pillow resamples in place with 8 bits per channel; LA and RGBA it resamples
# premultiplied (La, RGBa) and converts back, which the split does once around both passes.
_SPLIT_MODES = {"L": None, "RGB": None, "CMYK": None, "YCbCr": None, "LA": "La", "RGBA": "RGBa"}
_SPAN_MARGIN = 2  # extra source rows on each side: they cost little and guard the bound arithmetic


def _can_split(img: Image.Image, new_size: tuple[int, int], interpolation: str) -> bool:
    return (
        img.mode in _SPLIT_MODES
        and interpolation in _FILTER_SUPPORT
        and new_size != img.size
        and _pass_order_rule() is not None
    )


def _source_span(in_size: int, out_size: int, first: int, count: int, interpolation: str) -> tuple[int, int]:
    """Source rows [lo, hi) that Pillow's pass ``in_size -> out_size`` reads for outputs first..+count.

    Pillow's ``precompute_coeffs`` with ``in0 = 0``, ``in1 = in_size``: the filter of output ``i`` is
    centred at ``(i + 0.5) * scale`` and covers ``int(centre -/+ support + 0.5)``, clipped to the image;
    the bounds grow with ``i``, so the first and last outputs give the span.
    """
    scale = in_size / out_size
    support = _FILTER_SUPPORT[interpolation] * max(scale, 1.0)
    lo = int((first + 0.5) * scale - support + 0.5) - _SPAN_MARGIN
    hi = int((first + count - 1 + 0.5) * scale + support + 0.5) + _SPAN_MARGIN
    return max(lo, 0), min(hi, in_size)


@functools.cache
def _pass_order_rule() -> str | None:
    """Which pass the installed Pillow runs first, found once by comparing pixels; None if unknown.

    Pillow < 12 always resamples horizontally first. Later versions run the vertical pass first
    when ``in_h - out_h > 2 * (in_w - out_w) > ...`` (see ``_vertical_first``). The split path
    below must run the passes in Pillow's order (each pass rounds to 8 bits), so it checks the
    order on two small images and turns itself off (returns None) if neither rule matches.
    """
    rng = np.random.default_rng(0)

    def order(w: int, h: int, out: tuple[int, int]) -> str | None:
        img = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
        full = np.asarray(img.resize(out, Image.Resampling.BICUBIC))
        hv = img.resize((out[0], h), Image.Resampling.BICUBIC).resize(out, Image.Resampling.BICUBIC)
        vh = img.resize((w, out[1]), Image.Resampling.BICUBIC).resize(out, Image.Resampling.BICUBIC)
        same_hv, same_vh = np.array_equal(full, np.asarray(hv)), np.array_equal(full, np.asarray(vh))
        return "hv" if same_hv and not same_vh else "vh" if same_vh and not same_hv else None

    if order(61, 23, (29, 11)) != "hv":  # wide: horizontal first under both rules
        return None
    tall = order(23, 97, (17, 41))  # height shrinks 56, width 6: vertical first under the new rule
    return {"hv": "horizontal", "vh": "shrink"}.get(tall)


def _vertical_first(in_size: tuple[int, int], out_size: tuple[int, int]) -> bool:
    """Pillow >= 12's order (``ImagingResampleInner``): vertical first when the height shrinks by
    more than twice as many pixels as the width."""
    if _pass_order_rule() != "shrink":
        return False
    dy, dx = in_size[1] - out_size[1], in_size[0] - out_size[0]
    return dy > 0 and dy > 2 * dx


def _split_resize_center_crop(
    img: Image.Image, new_size: tuple[int, int], size: int, interpolation: str
) -> Image.Image:
    """``center_crop(img.resize(new_size), size)``, pixel for pixel, computing only what the crop keeps.

    Pillow resamples in two passes, each rounded to 8 bits, with coefficients that depend only on
    (input size, output size) per axis (``src/libImaging/Resample.c``). Calling the passes one at a
    time, in Pillow's order, gives the same pixels as one call, and every output row of a
    horizontal pass (column of a vertical pass) depends only on the same row (column) of its input.
    So the first pass runs only on the source rows or columns that the kept outputs read, and the
    second pass only on the rows or columns the crop keeps: about a quarter less work each for a
    4:3 photo. Source outside the span is zero-filled; no kept output reads it.

    Pillow's ``box`` argument would skip more work, but its box is single precision and shifts the
    filter centres, so its pixels differ (1-2% of values by one grey level, see
    benchmarks/attempts/preprocessing.md).
    """
    if _vertical_first(img.size, new_size):
        flipped = _split_horizontal_first(
            img.transpose(Image.Transpose.TRANSPOSE), new_size[::-1], size, interpolation
        )
        return flipped.transpose(Image.Transpose.TRANSPOSE)
    return _split_horizontal_first(img, new_size, size, interpolation)


def _split_horizontal_first(
    img: Image.Image, new_size: tuple[int, int], size: int, interpolation: str
) -> Image.Image:
    width, height = img.size
    new_w, new_h = new_size
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    filt = INTERPOLATIONS[interpolation]
    if new_h != height:
        y0, y1 = _source_span(height, new_h, top, size, interpolation)
    else:  # no vertical pass: the crop takes its rows straight from the horizontal pass
        y0, y1 = top, top + size
    rows = img if (y0, y1) == (0, height) else img.crop((0, y0, width, y1))
    premultiplied = _SPLIT_MODES[img.mode]
    if premultiplied:
        rows = rows.convert(premultiplied)  # what Image.resize does for LA/RGBA, per pixel
    if new_w != width:
        rows = rows.resize((new_w, y1 - y0), filt)  # horizontal pass only (height unchanged)
    strip = rows if new_w == size else rows.crop((left, 0, left + size, y1 - y0))
    if new_h != height:
        if (y0, y1) != (0, height):
            canvas = Image.new(strip.mode, (size, height))
            canvas.paste(strip, (0, y0))
            strip = canvas
        out = strip.resize((size, new_h), filt)  # vertical pass only (width unchanged)
        out = out if new_h == size else out.crop((0, top, size, top + size))
    else:
        out = strip.crop((0, top - y0, size, top - y0 + size))
    return out.convert(img.mode) if premultiplied else out


def convert_rgb(img: Image.Image) -> Image.Image:
    """``img.convert("RGB")``, plus the one mode Pillow cannot convert (premultiplied ``La``)."""
    if img.mode == "La":
        img = img.convert("LA")
    return img.convert("RGB")


def to_tensor_normalized(
    img: Image.Image,
    mean: tuple[float, float, float] = OPENAI_MEAN,
    std: tuple[float, float, float] = OPENAI_STD,
) -> torch.Tensor:
    """RGB PIL image -> normalised float tensor [3, H, W], bit-identical to ToTensor + Normalize.

    Other modes are converted to RGB first. The arithmetic is torchvision's, in its order and
    dtype (``/255`` then ``(x - mean) / std`` in the default float dtype), so results match exactly.
    """
    import torch

    dtype = torch.get_default_dtype()
    if dtype == torch.float32:  # the same float32 operations, without torch's per-call overhead
        return torch.from_numpy(to_array_normalized(img, mean, std))
    if img.mode != "RGB":
        img = convert_rgb(img)
    pixels = torch.from_numpy(np.array(img, dtype=np.uint8)).view(img.height, img.width, 3)
    x = pixels.permute(2, 0, 1).contiguous().to(dtype).div(255)
    mean_t = torch.as_tensor(mean, dtype=dtype).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=dtype).view(-1, 1, 1)
    return x.sub_(mean_t).div_(std_t)


def to_array_normalized(
    img: Image.Image,
    mean: tuple[float, float, float] = OPENAI_MEAN,
    std: tuple[float, float, float] = OPENAI_STD,
) -> np.ndarray:
    """:func:`to_tensor_normalized` in numpy (float32 [3, H, W]), for code that runs without torch.

    The same float32 operations in the same order, each rounded once, so the values are identical
    to the tensor path under torch's default float32 dtype (tested in tests/test_export_onnx.py).
    """
    if img.mode != "RGB":
        img = convert_rgb(img)
    x = np.array(img, dtype=np.uint8).reshape(img.height, img.width, 3).transpose(2, 0, 1).astype(np.float32)
    x /= np.float32(255)
    x -= np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    x /= np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
    return x


def eval_resize(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    """The geometric part of the eval transform: resize (by ``cfg.resize_mode``) and crop to n x n."""
    n, interp = cfg.image_size, cfg.interpolation
    if cfg.resize_mode == "shortest":
        return resize_center_crop(img, n, interp)
    if cfg.resize_mode == "longest":
        return center_crop(resize(img, longest_side_size(*img.size, n), interp), n)
    return resize(img, (n, n), interp)  # squash


def random_resized_crop_params(
    width: int,
    height: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """(top, left, crop_height, crop_width) drawn as torchvision's ``RandomResizedCrop.get_params``.

    Same draws in the same order, so with ``generator=None`` and the same global seed the crops
    equal torchvision's. Falls back to a centred crop after 10 rejected draws.
    """
    import torch

    area = height * width
    log_lo, log_hi = _log_ratio(*ratio)
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        log_ar = torch.empty(1).uniform_(log_lo, log_hi, generator=generator)
        aspect = torch.exp(log_ar).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@functools.lru_cache(maxsize=16)
def _log_ratio(low: float, high: float) -> tuple[float, float]:
    """torchvision's bounds for the aspect-ratio draw: the logs taken in float32, as it takes them."""
    import torch

    lo, hi = torch.log(torch.tensor((low, high))).tolist()
    return lo, hi


def jpeg_reduction(crop_size: tuple[int, int], out_size: int, margin: float = 2) -> int:
    """The largest JPEG decode reduction (8, 4, 2, else 1) that leaves a crop of ``crop_size``
    (h, w) at least ``margin * out_size`` pixels on both sides."""
    for factor in (8, 4, 2):
        if min(crop_size) >= margin * out_size * factor:
            return factor
    return 1


# ---------------------------------------------------------------------------------------------
# Transforms (classes, not closures, so DataLoader workers can pickle them)


def _check_pil(img: object) -> None:
    if not isinstance(img, Image.Image):
        raise TypeError(f"expected a PIL.Image.Image, got {type(img).__name__}; open files with load_image()")


class EvalTransform:
    """PIL image -> tensor [3, n, n] exactly as OpenAI's eval preprocessing (see module docstring)."""

    def __init__(self, cfg: PreprocessConfig, exif_transpose: bool = False) -> None:
        self.cfg = cfg
        self.exif_transpose = exif_transpose

    def __call__(self, img: Image.Image) -> torch.Tensor:
        _check_pil(img)
        if self.exif_transpose:
            img = ImageOps.exif_transpose(img)
        # to_tensor_normalized converts to RGB only when needed (convert("RGB") of an RGB image copies).
        return to_tensor_normalized(eval_resize(img, self.cfg), self.cfg.mean, self.cfg.std)

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"EvalTransform(size={c.image_size}, resize_mode={c.resize_mode!r}, interpolation={c.interpolation!r}, "
            f"mean={c.mean}, std={c.std}, exif_transpose={self.exif_transpose})"
        )


class TrainTransform:
    """CLIP's training augmentation: RandomResizedCrop (no flip), RGB, to tensor, normalise.

    Call as ``tf(img, generator=g)`` for reproducible crops; without a generator the draws come
    from torch's global RNG, which DataLoader seeds per worker.
    """

    def __init__(
        self,
        cfg: PreprocessConfig,
        crop_scale: tuple[float, float] = (0.9, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        exif_transpose: bool = False,
    ) -> None:
        for name, (lo, hi) in (("crop_scale", crop_scale), ("crop_ratio", crop_ratio)):
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be (low, high) with 0 < low <= high, got {(lo, hi)}")
        self.cfg = cfg
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.crop_ratio = (float(crop_ratio[0]), float(crop_ratio[1]))
        self.exif_transpose = exif_transpose
        self._whole = self.crop_scale == (1.0, 1.0) and self.crop_ratio[0] <= 1.0 <= self.crop_ratio[1]

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_pil(img)
        if self.exif_transpose:
            img = ImageOps.exif_transpose(img)
        return self._crop_resize(img, self._draw_crop(img.width, img.height, generator), 1)

    def _draw_crop(
        self, width: int, height: int, generator: torch.Generator | None
    ) -> tuple[int, int, int, int]:
        if self._whole and width == height:
            # Every draw torchvision accepts here is the whole square (a crop of the full area whose
            # sides round to at most the image's must equal them), and so is its fallback: skip the
            # draws. Only a caller's global generator state can differ, not the pixels.
            return 0, 0, height, width
        return random_resized_crop_params(width, height, self.crop_scale, self.crop_ratio, generator)

    def decode(
        self,
        source: str | os.PathLike | bytes,
        generator: torch.Generator | None = None,
        *,
        name: str | None = None,
    ) -> torch.Tensor:
        """Decode an image file (or encoded bytes) and augment it, decoding a JPEG at reduced scale.

        The crop is drawn from the file header's size with the same draws as ``self(img)``, so it
        covers the same part of the picture as ``self(load_image(source), generator)`` for the same
        generator state. A JPEG whose crop is at least ``2 * JPEG_REDUCTION_MARGIN`` times the output
        side is then decoded 2, 4 or 8 times smaller by the JPEG decoder itself (``Image.draft``,
        scaling in the IDCT), at the largest factor that leaves the crop at least
        ``JPEG_REDUCTION_MARGIN`` times the output on both sides, and the crop box is mapped into the
        reduced image (fractional, ``resize(box=...)``). Pixels then differ from the full decode
        by a fraction of a grey level on average (tests/test_transforms.py states the tolerance);
        everything else (other formats, smaller JPEGs, ``exif_transpose=True``) is decoded in
        full and gives exactly ``self(load_image(source), generator)``. Raises ``ImageLoadError``
        like :func:`load_image`.
        """
        if self.exif_transpose:  # the crop is drawn after the rotation, which the header does not give
            return self(load_image(source, True, name=name), generator)
        drawn: list[tuple[int, int, int, int]] = []

        def reduction(width: int, height: int) -> int:
            drawn.append(self._draw_crop(width, height, generator))
            return jpeg_reduction(drawn[0][2:], self.cfg.image_size, self.JPEG_REDUCTION_MARGIN)

        img, factor = _decode(source, name, reduction)
        return self._crop_resize(img, drawn[0], factor)

    # The final resize after a reduced JPEG decode still shrinks by at least this much (see decode()).
    JPEG_REDUCTION_MARGIN = 2

    def _crop_resize(self, img: Image.Image, crop: tuple[int, int, int, int], factor: int) -> torch.Tensor:
        """Crop ``crop`` = (top, left, h, w), given in full-size pixels, from ``img`` decoded ``factor``
        times smaller, and resize it to n x n."""
        top, left, h, w = crop
        n, interp = self.cfg.image_size, self.cfg.interpolation
        if factor == 1:
            img = resize(img.crop((left, top, left + w, top + h)), (n, n), interp)
        else:
            # Reduced pixel i covers full-size pixels [i * factor, (i + 1) * factor): x -> x / factor.
            x0, y0, x1, y1 = left / factor, top / factor, (left + w) / factor, (top + h) / factor
            # Crop to the whole reduced pixels the box touches first, so that, as in the full-size
            # path, the filter does not read the picture beyond the crop (less than a pixel of it).
            ix0, iy0 = math.floor(x0), math.floor(y0)
            img = img.crop((ix0, iy0, math.ceil(x1), math.ceil(y1)))
            box = (x0 - ix0, y0 - iy0, x1 - ix0, y1 - iy0)
            img = img.resize((n, n), INTERPOLATIONS[interp], box=box)
        return to_tensor_normalized(img, self.cfg.mean, self.cfg.std)

    def __repr__(self) -> str:
        c = self.cfg
        return (
            f"TrainTransform(size={c.image_size}, crop_scale={self.crop_scale}, crop_ratio={self.crop_ratio}, "
            f"interpolation={c.interpolation!r}, mean={c.mean}, std={c.std}, exif_transpose={self.exif_transpose})"
        )


def image_transform(
    cfg: PreprocessConfig | int,
    train: bool = False,
    *,
    crop_scale: tuple[float, float] = (0.9, 1.0),
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
    exif_transpose: bool = False,
) -> Callable[[Image.Image], torch.Tensor]:
    """The eval (OpenAI) or train (RandomResizedCrop) transform for a config or an image size.

    Both returned objects are picklable and map a PIL image to a float tensor [3, n, n].
    """
    if isinstance(cfg, int) and not isinstance(cfg, bool):
        cfg = PreprocessConfig(image_size=cfg)
    if not isinstance(cfg, PreprocessConfig):
        raise TypeError(
            f"image_transform expects a PreprocessConfig or an int size, got {type(cfg).__name__}"
        )
    if train:
        return TrainTransform(cfg, crop_scale, crop_ratio, exif_transpose)
    return EvalTransform(cfg, exif_transpose)
