"""`cliplab embed --model M --data PATH --out DIR`: embed an image collection for search.

``--data`` is a folder tree of images, a CSV/TSV/JSONL manifest (image path and optional caption
columns), a ``.txt`` list of paths, or WebDataset shards (a ``.tar``, a brace pattern, or a folder of
them). The output folder is described in :mod:`cliplab.search.embed`; running the same command again
after an interruption resumes it.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="checkpoint path or model name (anything cliplab.load accepts)"
    )
    parser.add_argument("--data", required=True, help="image folder, manifest, .txt list of paths, or shards")
    parser.add_argument("--out", required=True, help="output folder (resumed when it holds this same job)")
    parser.add_argument(
        "--dtype",
        default="float16",
        choices=("float16", "float32"),
        help="stored precision (default float16)",
    )
    parser.add_argument("--part-size", type=int, default=50_000, help="images per .npy part (default 50000)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    parser.add_argument(
        "--workers", type=int, default=None, help="DataLoader worker processes (default: all cores)"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda when available)")
    parser.add_argument(
        "--image-column", default=None, help="manifest column of image paths (default filepath/path/image)"
    )
    parser.add_argument(
        "--caption-column", default=None, help="manifest column (or shard .json key) of captions"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace embeddings of another job in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import os

    import cliplab
    from cliplab.device import resolve_device
    from cliplab.errors import UsageError
    from cliplab.inference import open_images
    from cliplab.search.embed import model_identity, plan_embedding, run_embedding

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers is not None and args.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {args.workers}")
    device = resolve_device(args.device)
    images = open_images(args.data, image_column=args.image_column, caption_column=args.caption_column)
    model, preprocess = cliplab.load(args.model, device=str(device))
    job = plan_embedding(
        args.out, images, os.path.abspath(args.data), model_identity(model, preprocess, args.model),
        dtype=args.dtype, part_size=args.part_size, overwrite=args.overwrite,
    )  # fmt: skip
    stats = run_embedding(
        job, model, preprocess, batch_size=args.batch_size, workers=args.workers, device=device,
        progress=not args.no_progress,
    )  # fmt: skip
    kept = f" (resumed: {stats['parts_kept']} finished part(s) kept)" if stats["parts_kept"] else ""
    if stats["images_this_run"]:
        rate = f"{stats['images_this_run']} images in {stats['seconds']:.1f} s, {stats['images_per_s']:.1f} images/s"
    else:
        rate = "nothing left to embed"
    print(
        f"embedded {stats['n_embedded']} of {len(images)} images into {args.out} in {stats['parts']} part(s){kept}; this run: {rate}"
    )
    if stats["skipped"]:
        print(
            f"skipped {len(stats['skipped'])} unreadable image(s), listed in {os.path.join(args.out, 'skipped.json')}:"
        )
        for _, source, reason in stats["skipped"][:10]:
            print(f"  {source}: {reason}")
    return 0
