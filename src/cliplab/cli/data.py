"""`cliplab data`: write the built-in synthetic dataset or its zero-shot tasks to disk.

cliplab data synthetic --out data/synth --n 10000 --format webdataset
cliplab data tasks --out data/tasks --per-class 50
cliplab data transfer --out data/transfer      # printed-digits/ and handwritten-digits/, folders 0..9

Both refuse a non-empty ``--out`` unless ``--overwrite`` is given, and check every argument before
anything is removed or written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

# The generator draws at 16 px and up; past 1024 px one image costs megabytes and nothing gains.
IMAGE_SIZE_RANGE = (16, 1024)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="WHAT", required=True)
    syn = sub.add_parser("synthetic", help="captioned images as image files + manifest, or webdataset shards")
    syn.add_argument("--out", type=Path, required=True, help="output folder (must be empty or new)")
    syn.add_argument("--n", type=int, required=True, help="number of samples")
    syn.add_argument("--format", choices=("files", "webdataset"), default="files")
    syn.add_argument(
        "--manifest", choices=("csv", "tsv", "jsonl"), default="csv", help="manifest type for --format files"
    )
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--image-size", type=int, default=64, help="image side in pixels, 16 to 1024")
    syn.add_argument("--shard-size", type=int, default=1000, help="samples per tar shard")
    syn.add_argument("--split", default="train", help="random stream to draw from (train, val, ...)")
    tasks = sub.add_parser("tasks", help="zero-shot tasks, one image folder per task under OUT/<task>/")
    tasks.add_argument("--out", type=Path, required=True, help="output folder (must be empty or new)")
    tasks.add_argument("--image-size", type=int, default=64, help="image side in pixels, 16 to 1024")
    tasks.add_argument("--per-class", type=int, default=20, help="images per class")
    tasks.add_argument("--seed", type=int, default=0)
    tasks.add_argument("--tasks", nargs="+", default=None, help="subset of tasks (default: all)")
    transfer = sub.add_parser(
        "transfer",
        help="the transfer sets (digits in held-out typefaces, real handwriting) as image folders 0..9",
    )
    transfer.add_argument("--out", type=Path, required=True, help="output folder (must be empty or new)")
    for p in (syn, tasks, transfer):
        p.add_argument("--overwrite", action="store_true", help="replace the contents of a non-empty --out")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")


def validate(args: argparse.Namespace) -> None:
    """Every argument checked before anything is written; a UsageError names the flag."""
    from cliplab.errors import UsageError
    from cliplab.fileio import check_output_dir

    low, high = IMAGE_SIZE_RANGE
    if args.data_command != "transfer" and not low <= args.image_size <= high:
        raise UsageError(f"--image-size must be between {low} and {high} pixels, got {args.image_size}")
    if args.data_command == "synthetic":
        if args.n < 1:
            raise UsageError(f"--n must be >= 1, got {args.n}")
        if args.shard_size < 1:
            raise UsageError(f"--shard-size must be >= 1, got {args.shard_size}")
    elif args.data_command == "tasks":
        from cliplab.data.synthetic import TASKS

        if args.per_class < 1:
            raise UsageError(f"--per-class must be >= 1, got {args.per_class}")
        unknown = [n for n in args.tasks or [] if n not in TASKS]
        if unknown:
            raise UsageError(f"--tasks: unknown task(s) {unknown}; available: {' '.join(TASKS)}")
    else:
        from cliplab.data.synthetic_render import font_dir
        from cliplab.data.transfer import mnist_file

        font_dir(), mnist_file()  # both sources are installed, before anything is removed
    check_output_dir(args.out, args.overwrite)


def run(args: argparse.Namespace) -> int:
    from cliplab.data.synthetic import SyntheticCaptions, zero_shot_tasks
    from cliplab.data.writers import write_files, write_image_folder, write_webdataset
    from cliplab.fileio import clear_output_dir

    validate(args)
    clear_output_dir(args.out)
    progress = not args.no_progress
    if args.data_command == "synthetic":
        data = SyntheticCaptions(args.n, seed=args.seed, image_size=args.image_size, split=args.split)
        if args.format == "files":
            manifest = write_files(data, args.out, fmt=args.manifest, progress=progress)
            print(f"wrote {args.n} samples: {manifest}")
        else:
            shards = write_webdataset(data, args.out, shard_size=args.shard_size, progress=progress)
            print(f"wrote {args.n} samples in {len(shards)} shard(s) under {args.out}")
        return 0
    if args.data_command == "transfer":
        from cliplab.data.transfer import TRANSFER_SETS, transfer_set

        for name in TRANSFER_SETS:
            task = transfer_set(name)
            folder = write_image_folder(task, args.out / name, progress=progress, prompts=False)
            print(f"{name}: {len(task.classnames)} classes, {len(task.labels)} images -> {folder}")
        return 0
    for task in zero_shot_tasks(args.image_size, args.per_class, args.seed, args.tasks):
        folder = write_image_folder(task, args.out / task.name, progress=progress)
        print(f"{task.name}: {len(task.classnames)} classes, {len(task.labels)} images -> {folder}")
    return 0
