"""cliplab.transforms against a plain Pillow + numpy restatement of OpenAI's eval preprocessing.

(Parity with torchvision itself is checked by benchmarks/check_transforms_torchvision.py, which
needs an environment where torchvision imports.)
"""

from __future__ import annotations

import io
import json
import pickle
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cliplab import transforms as T
from cliplab.transforms import (
    OPENAI_MEAN,
    OPENAI_STD,
    ImageLoadError,
    PreprocessConfig,
    image_transform,
    load_image,
    to_tensor_normalized,
)

MODES = [
    "RGB", "RGBA", "RGBa", "RGBX", "LA", "L", "1", "P", "P+trns", "PA",
    "I;16", "I;16B", "I", "F", "CMYK", "YCbCr", "HSV",
]  # fmt: skip
SIZES = [(1, 1), (2, 3), (5, 3), (223, 224), (224, 224), (225, 224), (300, 100), (100, 301), (641, 481)]


def reference(img: Image.Image, n: int, to_rgb=lambda im: im.convert("RGB")) -> np.ndarray:
    """OpenAI's steps, written out: short side to n (long side truncated), bicubic, centre crop
    with rounded offsets, then convert("RGB"), /255 and normalise. Returns [3, n, n] float64."""
    w, h = img.size
    new_size = (n, int(n * h / w)) if w <= h else (int(n * w / h), n)
    img = img.resize(new_size, Image.BICUBIC)
    top = int(round((new_size[1] - n) / 2.0))
    left = int(round((new_size[0] - n) / 2.0))
    img = to_rgb(img.crop((left, top, left + n, top + n)))
    x = np.asarray(img, dtype=np.float64) / 255.0
    x = (x - np.array(OPENAI_MEAN)) / np.array(OPENAI_STD)
    return x.transpose(2, 0, 1)


def make_image(mode: str, size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Noise on a gradient in any mode; 16/32-bit and float values go past 255 to hit clipping."""
    rng = np.random.default_rng(seed)
    w, h = size
    ramp = np.add.outer(np.linspace(0, 1, h), np.linspace(0, 1, w)) / 2
    if mode.startswith("P"):
        index = (ramp * 31 + rng.integers(0, 3, (h, w))).astype(np.uint8)  # palette of 34 colours
        img = Image.fromarray(index, "L").convert("P")
        img.putpalette(rng.integers(0, 256, 34 * 3, dtype=np.uint8).tobytes())
        if mode == "PA":
            return Image.merge("PA", [img, Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))])
        if mode == "P+trns":
            img.info["transparency"] = 2
        return img
    if mode in ("I;16", "I;16B"):
        vals = (ramp * 600 + rng.integers(0, 100, (h, w))).astype(">u2" if mode == "I;16B" else "<u2")
        return Image.frombytes(mode, size, vals.tobytes())
    if mode == "I":
        return Image.fromarray((ramp * 700 - 200 + rng.integers(0, 100, (h, w))).astype(np.int32), "I")
    if mode == "F":
        return Image.fromarray((ramp * 400 - 50 + rng.normal(0, 20, (h, w))).astype(np.float32), "F")
    if mode == "1":
        return Image.fromarray(rng.random((h, w)) < ramp).convert("1")
    bands = len(Image.new(mode, (1, 1)).getbands())
    vals = ramp[..., None] * 255 + rng.integers(-60, 60, (h, w, bands))
    return Image.frombytes(mode, size, vals.clip(0, 255).astype(np.uint8).tobytes())


def assert_matches(out: torch.Tensor, ref: np.ndarray) -> None:
    assert out.dtype == torch.float32
    assert tuple(out.shape) == ref.shape
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=1e-6)


# --- eval transform parity ----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_eval_matches_reference_every_mode_and_size(mode):
    tf = image_transform(224)
    for i, size in enumerate(SIZES):
        img = make_image(mode, size, seed=i)
        assert img.mode == mode.split("+")[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's palette-transparency note
            assert_matches(tf(img), reference(img, 224))


@pytest.mark.parametrize("n", [1, 7, 64, 336])
def test_eval_other_sizes(n):
    tf = image_transform(n)
    for size in [(1, 1), (n, n), (n + 1, n), (3 * n + 1, 2 * n + 3), (50, 17)]:
        img = make_image("RGB", size, seed=n)
        assert_matches(tf(img), reference(img, n))


@pytest.mark.parametrize("mode", ["RGB", "L", "P"])
@pytest.mark.parametrize("size", [(1, 2000), (2000, 1), (3, 4999)])
def test_extreme_aspect_ratios(mode, size):
    # n=32 keeps the intermediate (32 x 64000 for 1x2000) small; the rule is the same at 224.
    img = make_image(mode, size)
    assert_matches(image_transform(32)(img), reference(img, 32))


def test_large_image():
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    img = Image.fromarray(np.tile(tile, (100, 100, 1)))  # 8000 x 6000
    assert img.size == (8000, 6000)
    assert_matches(image_transform(224)(img), reference(img, 224))


def test_premultiplied_la_is_unpremultiplied_where_torchvision_fails():
    img = make_image("La", (50, 40))
    with pytest.raises(ValueError):
        reference(img, 16)  # Pillow cannot convert La to RGB; torchvision raises the same
    unpremultiplied = reference(img, 16, to_rgb=lambda im: im.convert("LA").convert("RGB"))
    assert_matches(image_transform(16)(img), unpremultiplied)


def test_sixteen_bit_images_clip_like_openai():
    vals = np.full((10, 10), 1000, dtype=np.uint16)  # above 255: Pillow's convert saturates
    out = image_transform(8)(Image.fromarray(vals))
    expected = (1.0 - np.array(OPENAI_MEAN)) / np.array(OPENAI_STD)
    np.testing.assert_allclose(out[:, 0, 0].numpy(), expected, atol=1e-6)


def test_huge_intermediate_uses_window_resample(monkeypatch):
    monkeypatch.setattr(T, "EXACT_RESIZE_MAX_PIXELS", 1000)
    ramp = np.linspace(0, 255, 900).astype(np.uint8)
    img = Image.fromarray(np.repeat(ramp[:, None], 3, axis=1))  # 3 x 900, smooth
    out = image_transform(32)(img)
    assert out.shape == (3, 32, 32)
    # Approximate path: a few grey levels at most on smooth content.
    np.testing.assert_allclose(out.numpy(), reference(img, 32), atol=4 / 255 / min(OPENAI_STD))


def test_center_crop_pads_small_images_with_zeros():
    img = Image.new("RGB", (3, 2), (255, 255, 255))
    out = np.asarray(T.center_crop(img, 6))
    # torchvision's split: left/top get (6-3)//2=1 and (6-2)//2=2, the odd pixel goes right/bottom.
    assert out.shape == (6, 6, 3)
    assert out[2:4, 1:4].min() == 255
    assert out.sum() == 255 * 3 * 6


def test_resize_mode_squash():
    img = make_image("RGB", (100, 50))
    squash = image_transform(PreprocessConfig(image_size=20, resize_mode="squash"))(img)
    assert torch.equal(squash, to_tensor_normalized(img.resize((20, 20), Image.BICUBIC)))


@pytest.mark.parametrize("size", [(100, 50), (33, 71), (7, 7), (1, 2000)])
def test_resize_mode_longest(size):
    # open_clip's rule: divide both sides by max(side / n), round, then zero-pad centred.
    n = 20
    img = make_image("RGB", size)
    ratio = max(size[0] / n, size[1] / n)
    new_w, new_h = max(1, round(size[0] / ratio)), max(1, round(size[1] / ratio))
    canvas = Image.new("RGB", (n, n))
    canvas.paste(img.resize((new_w, new_h), Image.BICUBIC), ((n - new_w) // 2, (n - new_h) // 2))
    out = image_transform(PreprocessConfig(image_size=n, resize_mode="longest"))(img)
    assert torch.equal(out, to_tensor_normalized(canvas))
    if size == (100, 50):  # content 20x10 sits in rows 5..14; rows above are black
        black = torch.tensor([-m / s for m, s in zip(OPENAI_MEAN, OPENAI_STD, strict=True)])
        assert torch.allclose(out[:, :5, :], black.view(3, 1, 1).expand(3, 5, n))


def test_to_tensor_normalized_matches_plain_numpy():
    img = make_image("RGB", (31, 17))
    x = (np.asarray(img, dtype=np.float64) / 255 - np.array(OPENAI_MEAN)) / np.array(OPENAI_STD)
    np.testing.assert_allclose(to_tensor_normalized(img).numpy(), x.transpose(2, 0, 1), atol=1e-6)


def test_rejects_non_pil_input():
    with pytest.raises(TypeError, match="PIL"):
        image_transform(224)(np.zeros((4, 4, 3), dtype=np.uint8))


# --- train transform ----------------------------------------------------------------------


def test_train_shape_and_generator_determinism():
    tf = image_transform(64, train=True)
    img = make_image("RGB", (300, 280))  # near-square, so crops are random, not the fallback
    a = tf(img, generator=torch.Generator().manual_seed(3))
    b = tf(img, generator=torch.Generator().manual_seed(3))
    c = tf(img, generator=torch.Generator().manual_seed(4))
    assert a.shape == (3, 64, 64) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_train_global_rng_reproducible():
    tf = image_transform(32, train=True)
    img = make_image("L", (90, 70))
    torch.manual_seed(11)
    a = tf(img)
    torch.manual_seed(11)
    assert torch.equal(a, tf(img))


def test_train_crop_equals_manual_crop_resize():
    tf = image_transform(40, train=True, crop_scale=(0.5, 0.6))
    img = make_image("RGBA", (120, 90))
    top, left, h, w = T.random_resized_crop_params(
        120, 90, (0.5, 0.6), (3 / 4, 4 / 3), torch.Generator().manual_seed(0)
    )
    want = to_tensor_normalized(
        img.crop((left, top, left + w, top + h)).resize((40, 40), Image.BICUBIC).convert("RGB")
    )
    assert torch.equal(tf(img, generator=torch.Generator().manual_seed(0)), want)
    assert 0.5 * 120 * 90 * 0.9 <= h * w <= 0.6 * 120 * 90 * 1.1


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 3000),
    st.integers(1, 3000),
    st.floats(0.05, 1.0),
    st.floats(0.2, 1.0),
    st.integers(0, 2**31),
)
def test_random_crop_params_stay_inside(width, height, lo, span, seed):
    scale = (lo, min(1.0, lo + span))
    top, left, h, w = T.random_resized_crop_params(
        width, height, scale, (3 / 4, 4 / 3), torch.Generator().manual_seed(seed)
    )
    assert 0 <= top and 0 <= left and 0 < h and 0 < w
    assert top + h <= height and left + w <= width


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 300),
    st.integers(8, 64),
    st.integers(0, 2**31),
    st.sampled_from([(3 / 4, 4 / 3), (1.0, 1.0), (0.5, 1.0)]),
)
def test_train_whole_image_shortcut_equals_the_draws(side, size, seed, ratio):
    """With crop_scale (1, 1) a square image skips the crop draws; the pixels are what they give."""
    tf = T.TrainTransform(PreprocessConfig(size), crop_scale=(1.0, 1.0), crop_ratio=ratio)
    img = make_image("RGB", (side, side))
    crop = T.random_resized_crop_params(side, side, (1.0, 1.0), ratio, torch.Generator().manual_seed(seed))
    assert crop == (0, 0, side, side)
    want = to_tensor_normalized(T.resize(img, (size, size), "bicubic"))
    assert torch.equal(tf(img, generator=torch.Generator().manual_seed(seed)), want)


def test_train_rejects_bad_ranges():
    with pytest.raises(ValueError, match="crop_scale"):
        image_transform(32, train=True, crop_scale=(0.9, 0.5))


# --- pickling, repr, config -----------------------------------------------------------------


@pytest.mark.parametrize("train", [False, True])
def test_transforms_pickle_and_repr(train):
    tf = image_transform(PreprocessConfig(image_size=48), train=train, exif_transpose=True)
    clone = pickle.loads(pickle.dumps(tf))
    img = make_image("RGB", (80, 60))
    kw = {"generator": torch.Generator().manual_seed(1)} if train else {}
    kw2 = {"generator": torch.Generator().manual_seed(1)} if train else {}
    assert torch.equal(tf(img, **kw), clone(img, **kw2))
    name = "TrainTransform" if train else "EvalTransform"
    assert repr(clone).startswith(f"{name}(size=48") and "exif_transpose=True" in repr(clone)


def test_config_round_trips_through_json():
    cfg = PreprocessConfig(
        image_size=336, interpolation="bilinear", resize_mode="squash", mean=(0.5, 0.5, 0.5)
    )
    back = PreprocessConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and isinstance(back.mean, tuple)
    assert PreprocessConfig().mean == OPENAI_MEAN and PreprocessConfig().std == OPENAI_STD


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_size": 0}, "image_size"),
        ({"image_size": 2.5}, "image_size"),
        ({"mean": (0.5, 0.5)}, "mean"),
        ({"std": (1.0, 0.0, 1.0)}, "std"),
        ({"interpolation": "cubic"}, "interpolation"),
        ({"resize_mode": "crop"}, "resize_mode"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PreprocessConfig(**kwargs)


def test_config_unknown_key_is_named():
    with pytest.raises(ValueError, match="image_sise"):
        PreprocessConfig.from_dict({"image_sise": 224})


# --- loading --------------------------------------------------------------------------------


def _encoded(fmt: str, size=(64, 48), **kw) -> bytes:
    buf = io.BytesIO()
    make_image("RGB", size).save(buf, fmt, **kw)
    return buf.getvalue()


def test_load_image_round_trip_and_file_closed(tmp_path):
    path = tmp_path / "a.png"
    make_image("RGB", (20, 10)).save(path)
    img = load_image(path)
    assert img.size == (20, 10) and img.mode == "RGB"
    assert np.array_equal(np.asarray(img), np.asarray(make_image("RGB", (20, 10))))
    gif = tmp_path / "b.gif"
    make_image("P", (9, 7)).save(gif)
    assert load_image(str(gif)).convert("RGB").size == (9, 7)  # usable after the file is closed


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageLoadError, match="notes.jpg") as info:
        load_image(path)
    assert "not an image" in str(info.value)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files(tmp_path, fmt):
    data = _encoded(fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match=f"cut.{fmt.lower()}"):
        load_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(ImageLoadError, match="does not exist"):
        load_image(tmp_path / "nope.png")


@pytest.mark.parametrize("as_bytes", [False, True], ids=["path", "bytes"])
def test_decompression_bomb(tmp_path, monkeypatch, as_bytes):
    def load(path):
        return load_image(path.read_bytes(), name=f"shard.tar:{path.stem}") if as_bytes else load_image(path)

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    big = tmp_path / "bomb.png"  # 64x48 = 3072 pixels: over twice the limit, Pillow's own error
    big.write_bytes(_encoded("PNG"))
    with pytest.raises(ImageLoadError, match="bomb.*MAX_IMAGE_PIXELS"):
        load(big)
    mid = tmp_path / "warn.png"  # 40x30 = 1200: Pillow only warns, load_image still refuses
    mid.write_bytes(_encoded("PNG", size=(40, 30)))
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(ImageLoadError, match="warn.*MAX_IMAGE"):
        load(mid)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning raised as an exception is wrapped too
        with pytest.raises(ImageLoadError, match="warn"):
            load(mid)


def test_load_image_from_bytes_is_the_same_decoder(tmp_path):
    path = tmp_path / "a.png"
    make_image("RGB", (20, 10)).save(path)
    from_bytes = load_image(path.read_bytes(), name="shard.tar:a")
    assert np.array_equal(np.asarray(from_bytes), np.asarray(load_image(path)))
    assert from_bytes.size == (20, 10) and from_bytes.mode == "RGB"
    with pytest.raises(ImageLoadError, match=r"cannot decode image shard\.tar:notes .*not an image"):
        load_image(b"this is not an image\n", name="shard.tar:notes")
    data = _encoded("PNG")
    with pytest.raises(ImageLoadError, match=r"<image bytes>.*truncated"):
        load_image(data[: len(data) // 2])


def _exif_png(tmp_path) -> tuple:
    img = make_image("RGB", (40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.png"
    img.save(path, exif=exif)
    return path, img


def test_exif_transpose_off_by_default_and_on_request(tmp_path):
    path, img = _exif_png(tmp_path)
    assert load_image(path).size == (40, 20)
    upright = load_image(path, exif_transpose=True)
    assert upright.size == (20, 40)
    assert np.array_equal(np.asarray(upright), np.asarray(img.transpose(Image.Transpose.ROTATE_270)))
    raw = load_image(path)
    on = image_transform(16, exif_transpose=True)(raw)
    off = image_transform(16)(raw)
    assert_matches(off, reference(img, 16))
    assert_matches(on, reference(img.transpose(Image.Transpose.ROTATE_270), 16))


# --- split resize (fast path) against the plain resize-then-crop ------------------------------


def _plain_resize_crop(img: Image.Image, n: int, interpolation: str = "bicubic") -> Image.Image:
    return T.center_crop(T.resize(img, T.shortest_side_size(*img.size, n), interpolation), n)


def test_pillow_pass_order_is_known():
    # The split path needs Pillow's pass order; with an unknown Pillow it switches itself off.
    assert T._pass_order_rule() in ("horizontal", "shrink")


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "LA", "CMYK", "YCbCr"])
def test_split_resize_is_identical_to_resize_then_crop(mode):
    rng = np.random.default_rng(list(MODES).index(mode) if mode in MODES else 99)
    bands = len(Image.new(mode, (1, 1)).getbands())
    sizes = [(640, 480), (480, 640), (500, 375), (375, 500), (1024, 683), (300, 300), (225, 224), (224, 225)]
    sizes += [(90, 400), (400, 90), (230, 700), (60, 61), (7, 300), (300, 7)]  # tall: vertical pass first
    sizes += [tuple(int(v) for v in rng.integers(1, 900, 2)) for _ in range(40)]
    interps = ["bicubic", "bilinear", "lanczos", "box", "hamming"]
    split = 0
    for i, (w, h) in enumerate(sizes):
        img = Image.frombytes(mode, (w, h), rng.integers(0, 256, (h, w, bands), dtype=np.uint8).tobytes())
        for n in (224, 32):
            interp = interps[i % len(interps)] if n == 32 else "bicubic"
            split += T._can_split(img, T.shortest_side_size(w, h, n), interp)
            got, want = T.resize_center_crop(img, n, interp), _plain_resize_crop(img, n, interp)
            assert got.mode == want.mode and got.size == want.size == (n, n)
            assert np.array_equal(np.asarray(got), np.asarray(want)), (mode, (w, h), n, interp)
    assert split > len(sizes)  # the fast path was really taken


def test_eval_transform_on_jpegs_equals_plain_path(tmp_path):
    # The eval transform (split resize, RGB conversion only when needed) against the plain steps.
    rng = np.random.default_rng(5)
    tf = image_transform(224)
    for i, (size, mode) in enumerate(
        [((640, 480), "RGB"), ((375, 500), "RGB"), ((300, 800), "L"), ((500, 375), "CMYK")]
    ):
        path = tmp_path / f"{i}.jpg"
        make_image(mode, size, seed=i).save(path, quality=int(rng.integers(70, 95)))
        img = load_image(path)
        plain = to_tensor_normalized(_plain_resize_crop(img, 224).convert("RGB"))
        assert torch.equal(tf(img), plain)


@pytest.mark.slow
def test_split_resize_thousands_of_geometries():
    rng = np.random.default_rng(123)
    for i in range(1500):
        w, h = (int(v) for v in rng.integers(1, 1300, 2))
        if i % 3 == 0:  # photo aspect ratios
            h = max(1, int(w * rng.choice([3 / 4, 4 / 3, 2 / 3, 3 / 2, 9 / 16, 16 / 9])))
        n = int(rng.choice([224, 224, 336, 64, 7, 1]))
        mode = ["RGB", "L", "RGBA"][i % 3]
        bands = len(mode)
        img = Image.frombytes(mode, (w, h), rng.integers(0, 256, (h, w, bands), dtype=np.uint8).tobytes())
        got, want = T.resize_center_crop(img, n), _plain_resize_crop(img, n)
        assert np.array_equal(np.asarray(got), np.asarray(want)), (mode, (w, h), n)


# ---------------------------------------------------------------------------------------------
# Training: reduced-scale JPEG decoding (TrainTransform.decode)


def _photo(mode: str, size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Photo-like content: colour ramps, a few bright discs and mild noise, so a crop placed a few
    pixels off shows up as a large difference, while JPEG noise stays small."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rgb = np.stack([x / w * 200, y / h * 200, (x + y) / (w + h) * 120 + 60], axis=-1)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.05, 0.2) * min(w, h)
        rgb[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.uniform(0, 255, 3)
    rgb += rng.normal(0, 4, rgb.shape)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).convert(mode)


def _grey_levels(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tensor(OPENAI_STD).view(3, 1, 1) * 255


# (size, mode, output side): 2x, 4x and 8x reductions; wide, tall, square; grey and CMYK files.
REDUCED_CASES = [
    ((640, 480), "RGB", 32),
    ((480, 640), "RGB", 64),
    ((1200, 300), "RGB", 32),
    ((500, 500), "L", 32),
    ((600, 400), "CMYK", 48),
    ((2000, 1500), "RGB", 96),
]


@pytest.mark.parametrize(("size", "mode", "n"), REDUCED_CASES)
def test_train_decode_reduces_jpegs_and_crops_the_same_region(tmp_path, size, mode, n):
    path = tmp_path / "photo.jpg"
    _photo(mode, size).save(path, quality=90)
    tf = image_transform(n, train=True, crop_scale=(0.5, 1.0))
    full_img = load_image(path)
    diffs, shifted = [], []
    for seed in range(4):
        crop = T.random_resized_crop_params(*full_img.size, tf.crop_scale, tf.crop_ratio, _gen(seed))
        assert T.jpeg_reduction(crop[2:], n) > 1  # the reduced path is really taken
        full = tf(full_img, generator=_gen(seed))
        fast = tf.decode(path, _gen(seed))
        assert fast.shape == full.shape == (3, n, n)
        diffs.append(_grey_levels(fast - full).abs())
        # The same crop moved by 3 % of the picture: what a wrongly mapped box would give.
        top, left, h, w = crop
        dx = max(1, size[0] * 3 // 100) * (1 if left == 0 else -1)
        moved = full_img.crop((left + dx, top, left + dx + w, top + h)).resize((n, n), Image.BICUBIC)
        shifted.append(_grey_levels(to_tensor_normalized(moved) - full).abs().mean())
    d = torch.stack(diffs)
    # Stated tolerance: under 1 grey level (of 255) on average per image; single pixels can differ
    # more at sharp edges (IDCT scaling is not a bicubic filter).
    assert d.mean(dim=(1, 2, 3)).max() < 1.0, d.mean(dim=(1, 2, 3))
    assert float(torch.stack(shifted).min()) > 4 * float(d.mean(dim=(1, 2, 3)).max())


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_train_decode_is_exact_where_nothing_is_reduced(tmp_path):
    # PNG (no IDCT scaling), a JPEG too small for its output, and exif_transpose: full decode, same pixels.
    png, small = tmp_path / "a.png", tmp_path / "b.jpg"
    _photo("RGB", (640, 480)).save(png)
    _photo("RGB", (300, 260), seed=1).save(small, quality=90)
    cases = [(png, image_transform(32, train=True)), (small, image_transform(224, train=True))]
    cases.append((small, T.TrainTransform(PreprocessConfig(32), exif_transpose=True)))
    for path, tf in cases:
        for seed in range(3):
            assert torch.equal(tf.decode(path, _gen(seed)), tf(load_image(path), generator=_gen(seed)))
    data = small.read_bytes()  # bytes work as a source too
    tf = image_transform(32, train=True)
    assert torch.allclose(tf.decode(data, _gen(0)), tf.decode(small, _gen(0)))


def test_train_decode_errors_and_eval_loading_unchanged(tmp_path):
    path = tmp_path / "big.jpg"
    _photo("RGB", (800, 600)).save(path, quality=90)
    # load_image (used by evaluation and every eval transform) still decodes in full.
    assert load_image(path).size == (800, 600)
    assert load_image(path.read_bytes()).size == (800, 600)
    tf = image_transform(32, train=True)
    with pytest.raises(ImageLoadError, match="junk"):
        tf.decode(b"not an image", _gen(0), name="junk")
    with pytest.raises(ImageLoadError, match="does not exist"):
        tf.decode(tmp_path / "missing.jpg", _gen(0))
    # The reduction rule: the largest factor leaving the crop >= 2x the output on both sides.
    assert T.jpeg_reduction((480, 640), 32) == 4
    assert T.jpeg_reduction((512, 700), 32) == 8
    assert T.jpeg_reduction((127, 900), 32) == 1
    assert T.jpeg_reduction((130, 130), 32) == 2
    assert T.jpeg_reduction((130, 130), 32, margin=1) == 4
