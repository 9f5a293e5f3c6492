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
    if isinstance(source, (bytes, bytearray, memoryview)):
        name = name or "<image bytes>"
        fp = io.BytesIO(source)
    else:
        name = name or os.fspath(source)
        fp = os.fspath(source)
    try:
        with Image.open(fp) as img:
            _check_pixel_count(img, name)
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
    if exif_transpose:
        try:
            img = ImageOps.exif_transpose(img)
        except Exception as exc:
            raise ImageLoadError(
                f"cannot apply the EXIF orientation of {name} ({type(exc).__name__}: {exc}); "
                "load it with exif_transpose=False or fix its EXIF data."
            ) from exc
    return img


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
    """OpenAI's ``Resize(size)`` then ``CenterCrop(size)``, without a giant intermediate image."""
    new_w, new_h = shortest_side_size(*img.size, size)
    if new_w * new_h <= EXACT_RESIZE_MAX_PIXELS:
        return center_crop(resize(img, (new_w, new_h), interpolation), size)
    # Extreme aspect ratio: resample only the window the crop keeps (inexact, see module docstring).
    top = int(round((new_h - size) / 2.0))
    left = int(round((new_w - size) / 2.0))
    sx, sy = img.width / new_w, img.height / new_h
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return img.resize((size, size), INTERPOLATIONS[interpolation], box=box)


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

    if img.mode != "RGB":
        img = convert_rgb(img)
    pixels = torch.from_numpy(np.array(img, dtype=np.uint8)).view(img.height, img.width, 3)
    dtype = torch.get_default_dtype()
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
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        log_ar = torch.empty(1).uniform_(log_ratio[0].item(), log_ratio[1].item(), generator=generator)
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
        return to_tensor_normalized(convert_rgb(eval_resize(img, self.cfg)), self.cfg.mean, self.cfg.std)

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

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_pil(img)
        if self.exif_transpose:
            img = ImageOps.exif_transpose(img)
        top, left, h, w = random_resized_crop_params(
            img.width, img.height, self.crop_scale, self.crop_ratio, generator
        )
        n = self.cfg.image_size
        img = resize(img.crop((left, top, left + w, top + h)), (n, n), self.cfg.interpolation)
        return to_tensor_normalized(convert_rgb(img), self.cfg.mean, self.cfg.std)

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
