"""`cliplab data`: write the built-in synthetic dataset or its zero-shot tasks to disk.

cliplab data synthetic --out data/synth --n 10000 --format webdataset
cliplab data tasks --out data/tasks --per-class 50
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="WHAT", required=True)
    syn = sub.add_parser("synthetic", help="captioned images as image files + manifest, or webdataset shards")
    syn.add_argument("--out", type=Path, required=True, help="output folder")
    syn.add_argument("--n", type=int, required=True, help="number of samples")
    syn.add_argument("--format", choices=("files", "webdataset"), default="files")
    syn.add_argument(
        "--manifest", choices=("csv", "tsv", "jsonl"), default="csv", help="manifest type for --format files"
    )
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--image-size", type=int, default=64)
    syn.add_argument("--shard-size", type=int, default=1000, help="samples per tar shard")
    syn.add_argument("--split", default="train", help="random stream to draw from (train, val, ...)")
    tasks = sub.add_parser("tasks", help="zero-shot tasks, one image folder per task under OUT/<task>/")
    tasks.add_argument("--out", type=Path, required=True, help="output folder")
    tasks.add_argument("--image-size", type=int, default=64)
    tasks.add_argument("--per-class", type=int, default=20, help="images per class")
    tasks.add_argument("--seed", type=int, default=0)
    tasks.add_argument("--tasks", nargs="+", default=None, help="subset of tasks (default: all)")


def run(args: argparse.Namespace) -> int:
    from cliplab.data.synthetic import SyntheticCaptions, zero_shot_tasks
    from cliplab.data.writers import write_files, write_image_folder, write_webdataset

    if args.data_command == "synthetic":
        if args.n < 1:
            print(f"--n must be >= 1, got {args.n}")
            return 2
        data = SyntheticCaptions(args.n, seed=args.seed, image_size=args.image_size, split=args.split)
        if args.format == "files":
            manifest = write_files(data, args.out, fmt=args.manifest)
            print(f"wrote {args.n} samples: {manifest}")
        else:
            shards = write_webdataset(data, args.out, shard_size=args.shard_size)
            print(f"wrote {args.n} samples in {len(shards)} shard(s) under {args.out}")
        return 0
    try:
        tasks = zero_shot_tasks(args.image_size, args.per_class, args.seed, args.tasks)
    except ValueError as err:  # an unknown --tasks name
        print(f"cliplab data tasks: {err}")
        return 2
    for task in tasks:
        folder = write_image_folder(task, args.out / task.name)
        print(f"{task.name}: {len(task.classnames)} classes, {len(task.labels)} images -> {folder}")
    return 0
