"""One-off parity check: cliplab.transforms against torchvision's Compose, OpenAI's and open_clip's.

Run it in a separate environment that has torchvision (it does not import beside cliplab's torch):

    python3 -m venv /work/cmpenv
    /work/cmpenv/bin/pip install torch==2.14.1 torchvision==0.29.1 numpy pillow
    /work/cmpenv/bin/pip install open_clip_torch "setuptools<81"      # optional extra references
    /work/cmpenv/bin/pip install --no-deps clip-anytorch               # (OpenAI's clip needs pkg_resources)
    /work/cmpenv/bin/python benchmarks/check_transforms_torchvision.py [--quick]

transforms.py is imported by file path (it needs only torch, numpy and Pillow), so cliplab itself
need not be installed there. Prints the max abs difference per (mode, size) case and PASS/FAIL.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image
from torchvision import transforms as T

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location(
    "cliplab_transforms", ROOT / "src" / "cliplab" / "transforms.py"
)
ct = importlib.util.module_from_spec(SPEC)
sys.modules["cliplab_transforms"] = ct  # dataclasses look the module up while building the class
SPEC.loader.exec_module(ct)

N = 224
MODES = [
    "RGB", "RGBA", "RGBa", "RGBX", "LA", "La", "L", "1", "P", "P+trns-int", "P+trns-bytes", "PA",
    "I;16", "I;16B", "I;16L", "I", "F", "CMYK", "YCbCr", "LAB", "HSV",
]  # fmt: skip
SIZES = [
    (1, 1), (2, 3), (5, 3), (223, 224), (224, 224), (225, 225), (224, 225), (300, 100), (100, 300),
    (641, 481), (480, 640), (999, 1001), (37, 1000), (1, 2000), (2000, 1), (3, 5000),
]  # fmt: skip
LARGE = [(8000, 6000), (6000, 8000)]
LARGE_MODES = {"RGB", "L", "RGBA", "P", "I;16"}


def make_image(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    """Noise plus a gradient, in the given mode, with values that exercise clipping."""
    rng = np.random.default_rng(seed)
    w, h = size
    ramp = np.add.outer(np.linspace(0, 1, h), np.linspace(0, 1, w)) / 2
    if mode.startswith("P"):
        rgb = (ramp[..., None] * 255 + rng.integers(-40, 40, (h, w, 3))).clip(0, 255).astype(np.uint8)
        img = Image.fromarray(rgb, "RGB").quantize(64)
        if mode == "PA":
            return Image.merge("PA", [img, Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))])
        if mode == "P+trns-int":
            img.info["transparency"] = 3
        elif mode == "P+trns-bytes":
            img.info["transparency"] = bytes(rng.integers(0, 256, 64, dtype=np.uint8))
        return img
    if mode.startswith("I;16"):
        vals = (ramp * 600 + rng.integers(0, 100, (h, w))).astype(np.uint16)
        dtype = ">u2" if mode == "I;16B" else "<u2"
        return Image.frombytes(mode, size, vals.astype(dtype).tobytes())
    if mode == "I":
        vals = (ramp * 700 - 200 + rng.integers(0, 100, (h, w))).astype(np.int32)
        return Image.fromarray(vals, "I")
    if mode == "F":
        return Image.fromarray((ramp * 400 - 50 + rng.normal(0, 20, (h, w))).astype(np.float32), "F")
    if mode == "1":
        return Image.fromarray(rng.random((h, w)) < ramp).convert("1")
    bands = len(Image.new(mode, (1, 1)).getbands())
    vals = ramp[..., None] * 255 + rng.integers(-60, 60, (h, w, bands))
    return Image.frombytes(mode, size, vals.clip(0, 255).astype(np.uint8).tobytes())


def torchvision_eval(n: int) -> T.Compose:
    return T.Compose(
        [
            T.Resize(n, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(n),
            lambda im: im.convert("RGB"),
            T.ToTensor(),
            T.Normalize(ct.OPENAI_MEAN, ct.OPENAI_STD),
        ]
    )


def extra_references(n: int) -> dict:
    refs = {}
    try:
        import clip  # OpenAI's package; needs pkg_resources

        refs["openai_clip"] = clip.clip._transform(n)
    except Exception as exc:  # noqa: BLE001 - optional reference
        print(f"[skip] OpenAI clip reference: {type(exc).__name__}: {exc}")
    try:
        import open_clip

        refs["open_clip"] = open_clip.image_transform(n, is_train=False)
    except Exception as exc:  # noqa: BLE001
        print(f"[skip] open_clip reference: {type(exc).__name__}: {exc}")
    return refs


def run_ref(fn, img):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(img), None
    except Exception as exc:  # noqa: BLE001 - a reference failing is a result to report
        return None, f"{type(exc).__name__}: {exc}"


def diff(a: torch.Tensor | None, b: torch.Tensor) -> float | None:
    if a is None:
        return None
    return float("inf") if a.shape != b.shape else float((a - b).abs().max())


def check_eval(cases, refs, ours) -> tuple[list[dict], bool]:
    rows, ok = [], True
    for mode, size in cases:
        img = make_image(mode, size, seed=zlib.crc32(f"{mode}{size}".encode()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mine = ours(img)
        row = {"mode": mode, "size": f"{size[0]}x{size[1]}"}
        for name, fn in refs.items():
            out, err = run_ref(fn, img)
            row[name] = diff(out, mine) if err is None else f"FAILS ({err[:60]})"
            if err is None and row[name] != 0.0:
                ok = False
            if err is not None and mode != "La":
                ok = False  # a reference failing anywhere but the documented La case is a surprise
        rows.append(row)
        print(json.dumps(row))
    return rows, ok


def check_center_crop(ok: bool) -> bool:
    """Padding path of CenterCrop (unreachable after Resize, matched anyway), every mode."""
    for mode in MODES:
        for size in [(1, 1), (5, 3), (10, 300), (300, 11), (7, 8)]:
            img = make_image(mode, size, seed=1)
            a, b = T.CenterCrop(20)(img), ct.center_crop(img, 20)
            same = a.mode == b.mode and np.array_equal(np.array(a), np.array(b))
            if a.mode in ("P", "PA"):
                same = same and a.getpalette() == b.getpalette()
            if not same:
                print(f"center_crop MISMATCH mode={mode} size={size}")
                ok = False
    print(f"center_crop (padding) all modes: {'PASS' if ok else 'FAIL'}")
    return ok


def check_open_clip_resize_modes(n: int, ok: bool) -> bool:
    """resize_mode "longest" and "squash" against open_clip's eval transform (when installed)."""
    try:
        import open_clip
    except ImportError:
        print("[skip] open_clip resize modes: open_clip not installed")
        return ok
    for resize_mode in ("longest", "squash"):
        ref = open_clip.image_transform(n, is_train=False, resize_mode=resize_mode)
        ours = ct.image_transform(ct.PreprocessConfig(image_size=n, resize_mode=resize_mode))
        worst, failures = 0.0, []
        for mode in ("RGB", "RGBA", "L", "P", "I;16", "F", "CMYK"):
            for size in [
                (1, 1),
                (5, 3),
                (224, 224),
                (300, 100),
                (100, 301),
                (641, 481),
                (37, 1000),
                (1, 2000),
            ]:
                img = make_image(mode, size, seed=3)
                out, err = run_ref(ref, img)
                if err is not None:
                    failures.append(f"{mode} {size}: {err[:60]}")
                    continue
                worst = max(worst, diff(out, ours(img)))
        print(f"open_clip resize_mode={resize_mode!r}: max abs diff {worst}, open_clip failures {failures}")
        ok = ok and worst == 0.0
    return ok


def check_train(n: int, ok: bool) -> bool:
    tv = T.Compose(
        [
            T.RandomResizedCrop(n, scale=(0.9, 1.0), interpolation=T.InterpolationMode.BICUBIC),
            lambda im: im.convert("RGB"),
            T.ToTensor(),
            T.Normalize(ct.OPENAI_MEAN, ct.OPENAI_STD),
        ]
    )
    ours = ct.image_transform(n, train=True)
    worst = 0.0
    for i, size in enumerate([(640, 480), (300, 1000), (50, 60), (1, 500), (224, 224)]):
        img = make_image("RGB", size, seed=i)
        for seed in range(5):
            torch.manual_seed(seed)
            a = tv(img)
            torch.manual_seed(seed)
            worst = max(worst, float((a - ours(img)).abs().max()))
    print(f"train transform vs RandomResizedCrop (same global seed): max abs diff {worst} "
          f"{'PASS' if worst == 0 else 'FAIL'}")  # fmt: skip
    return ok and worst == 0


def time_eval(n: int, repeats: int = 20, rounds: int = 10) -> None:
    """ms per image for a 640x480 RGB photo-sized input, cliplab vs torchvision (1 thread).

    The two alternate in short rounds and the best round counts, since the machine is shared.
    """
    torch.set_num_threads(1)
    img = make_image("RGB", (640, 480), seed=0)
    fns = {"cliplab": ct.image_transform(n), "torchvision": torchvision_eval(n)}
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(repeats):
                fn(img)
            best[name] = min(best[name], (time.perf_counter() - start) / repeats * 1e3)
    result = {f"{name}_ms": round(ms, 3) for name, ms in best.items()}
    result["ratio_cliplab_over_torchvision"] = round(best["cliplab"] / best["torchvision"], 3)
    print(json.dumps({"eval_transform_640x480": result}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the 8000x6000 and 1x2000-style cases")
    parser.add_argument("--time", action="store_true", help="only time the eval transform")
    args = parser.parse_args()
    if args.time:
        time_eval(N)
        return
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, Pillow {PIL.__version__}")
    refs = {"torchvision": torchvision_eval(N), **extra_references(N)}
    sizes = [s for s in SIZES if not (args.quick and max(s) / min(s) > 100)]
    cases = [(m, s) for m in MODES for s in sizes]
    if not args.quick:
        cases += [(m, s) for m in MODES if m in LARGE_MODES for s in LARGE]
    rows, ok = check_eval(cases, refs, ct.image_transform(N))
    ok = check_center_crop(ok)
    ok = check_open_clip_resize_modes(N, ok)
    ok = check_train(N, ok)
    numeric = [r["torchvision"] for r in rows if isinstance(r["torchvision"], float)]
    print(
        json.dumps(
            {
                "cases": len(rows),
                "torchvision_max_abs_diff": max(numeric),
                "torchvision_failures": [
                    f"{r['mode']} {r['size']}" for r in rows if isinstance(r["torchvision"], str)
                ],
                "result": "PASS" if ok else "FAIL",
            }
        )
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
