"""(5) Image decoding + preprocessing, images/s per worker: cliplab against open_clip.

One process, one thread (a data-loader worker). Each implementation turns each file of the same
set of JPEGs (plus a grayscale and a CMYK JPEG and a PNG with alpha) into the normalised
(3, 224, 224) tensor, as its own data loader does it:

* open_clip: ``preprocess(Image.open(path))`` with ``open_clip.image_transform(224, is_train=False)``
  (its ``CsvDataset`` passes the lazily opened image straight to the transform, which resizes,
  centre-crops, converts to RGB, ToTensor, Normalize);
* cliplab: ``preprocess(load_image(path))`` with ``cliplab.transforms.image_transform(224)`` (the
  decoder every cliplab loader uses, then the eval transform);
* cliplab-plain: cliplab's steps without the split resize (one full ``Image.resize``, then crop),
  to show what the split saves.

Every tensor is compared with ``torch.equal`` before anything is timed. The implementations
alternate pass after pass over the whole set; images/s is files / median pass time.

    .bench-venv/bin/python benchmarks/compare_preprocess.py [--rounds 7] [--data DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import Report, alternate  # noqa: E402

N = 224
# (width, height, count): camera and web sizes, portraits, a square, two big photos of each
# orientation and a panorama.
SIZES = [
    (640, 480, 4), (500, 375, 4), (1024, 683, 3), (480, 640, 3), (375, 500, 3), (800, 800, 2),
    (2048, 1536, 2), (1536, 2048, 1), (2400, 1600, 1), (1200, 400, 1),
]  # fmt: skip
GROUPS = {
    "small (<= 1024 px)": lambda p: max(Image.open(p).size) <= 1024,
    "large (>= 1200 px)": lambda p: max(Image.open(p).size) >= 1200,
}


def photo(width: int, height: int, rng: np.random.Generator) -> Image.Image:
    """Photo-like content: smooth colour fields at three scales plus sensor noise, so JPEG
    compression, file sizes and decode times behave as they do for photographs."""
    acc = np.full((height, width, 3), 128.0, np.float32)
    for cells, amp in ((4, 90.0), (16, 40.0), (64, 20.0)):
        rows = max(2, cells * height // max(width, height))
        cols = max(2, cells * width // max(width, height))
        small = rng.uniform(-1, 1, (rows, cols, 3)).astype(np.float32)
        for c in range(3):
            band = Image.fromarray(small[..., c], "F").resize((width, height), Image.Resampling.BICUBIC)
            acc[..., c] += amp * np.asarray(band)
    acc += rng.normal(0, 4, (height, width, 1)).astype(np.float32)
    return Image.fromarray(acc.clip(0, 255).astype(np.uint8), "RGB")


def make_dataset(root: Path, seed: int = 0) -> list[Path]:
    """Write the benchmark's images under root (fixed seed) and return their paths."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for width, height, count in SIZES:
        for i in range(count):
            path = root / f"{width}x{height}_{i}.jpg"
            photo(width, height, rng).save(path, quality=int(rng.integers(75, 96)))
            paths.append(path)
    gray = root / "gray_640x480.jpg"
    photo(640, 480, rng).convert("L").save(gray, quality=90)
    cmyk = root / "cmyk_500x375.jpg"
    photo(500, 375, rng).convert("CMYK").save(cmyk, quality=90)
    rgba = root / "rgba_400x300.png"
    img = photo(400, 300, rng).convert("RGBA")
    img.putalpha(Image.fromarray(rng.integers(0, 256, (300, 400), dtype=np.uint8)))
    img.save(rgba)
    return [*paths, gray, cmyk, rgba]


def implementations():
    import open_clip

    from cliplab import transforms as T

    oc = open_clip.image_transform(N, is_train=False)
    cl = T.image_transform(N)

    def cliplab_plain(img: Image.Image) -> torch.Tensor:
        img = T.center_crop(T.resize(img, T.shortest_side_size(*img.size, N)), N)
        return T.to_tensor_normalized(img)

    return {
        "open_clip": lambda path: oc(Image.open(path)),
        "cliplab": lambda path: cl(T.load_image(path)),
        "cliplab-plain": lambda path: cliplab_plain(T.load_image(path)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="alternating timed rounds per implementation")
    parser.add_argument(
        "--passes", type=int, default=4, help="passes over the set in one timed round (rounds of ~1 s)"
    )
    parser.add_argument("--data", type=Path, help="keep the images here (default: a temporary folder)")
    args = parser.parse_args()
    if args.rounds < 1 or args.passes < 1:
        parser.error("--rounds and --passes must be at least 1")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_dataset(args.data or Path(tmp))
        run(paths, args.rounds, args.passes)


def run(paths: list[Path], rounds: int, passes: int = 1) -> None:
    impls = implementations()
    report = Report(
        name="compare_preprocess",
        title="(5) Image decoding + preprocessing (images/s per worker)",
        description=(
            f"{len(paths)} files ({', '.join(f'{w}x{h}' for w, h, _ in SIZES)} JPEGs of photo-like content, "
            "a grayscale and a CMYK JPEG, an RGBA PNG), each decoded and turned into the normalised "
            "(3, 224, 224) tensor of the eval transform, one process and one torch thread. open_clip: "
            "image_transform(224, is_train=False) on Image.open(path), as its CsvDataset; cliplab: "
            "image_transform(224) on load_image(path); cliplab-plain: cliplab without the split resize. "
            f"Rounds of {passes} passes over the set alternate between implementations; median of {rounds} rounds."
        ),
    )
    identical = 0
    for path in paths:
        ref = impls["open_clip"](path)
        outs = [impls[name](path) for name in ("cliplab", "cliplab-plain")]
        if all(o.shape == ref.shape and torch.equal(o, ref) for o in outs):
            identical += 1
        else:
            print(f"DIFFERENT: {path.name}")
    ok = report.agree(
        f"tensors identical to open_clip's (torch.equal), of {len(paths)} files",
        "files identical",
        identical == len(paths),
    )
    report.notes.append(
        f"{identical}/{len(paths)} files give torch.equal tensors (cliplab, cliplab-plain vs open_clip)."
    )
    if not ok:
        report.print()
        report.write()
        sys.exit("tensors differ from open_clip's; not timing")

    cases = {"all files": paths}
    cases.update({g: [p for p in paths if keep(p)] for g, keep in GROUPS.items()})
    ratio_all = None
    for case, files in cases.items():
        timed = alternate(
            {
                name: (lambda fn=fn, files=files: [fn(p) for _ in range(passes) for p in files])
                for name, fn in impls.items()
            },
            rounds=rounds,
        )
        for name, t in timed.items():
            report.row(
                case=case, impl=name, files=len(files), images_per_s=round(passes * len(files) / t["median_s"], 2),
                ms_per_image=round(t["median_s"] / (passes * len(files)) * 1e3, 3), times_s=t["times_s"],
            )  # fmt: skip
        ratio = timed["open_clip"]["median_s"] / timed["cliplab"]["median_s"]
        report.row(
            case=case, impl="ratio", cliplab_over_open_clip=round(ratio, 3),
            cliplab_over_plain=round(timed["cliplab-plain"]["median_s"] / timed["cliplab"]["median_s"], 3),
        )  # fmt: skip
        if case == "all files":
            ratio_all = ratio
    report.target("images/s per worker vs open_clip (identical tensors)", 1.2, ratio_all)
    report.print()
    print(report.write())


if __name__ == "__main__":
    main()
