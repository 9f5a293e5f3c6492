"""Training-data throughput: samples/s of each ``build_train_loader`` source against in-memory tensors.

Writes N synthetic samples as PNG files + CSV manifest and as WebDataset shards, then times one epoch
of each source through the training augmentation (RandomResizedCrop) and the BPE tokenizer:

* ``memory``: pre-decoded, pre-augmented tensors in a plain DataLoader (the ceiling: no decoding),
* ``manifest``: PNG files listed in a manifest,
* ``webdataset``: tar shards,
* ``synthetic``: images rendered on the fly by the built-in generator.

Each time includes starting the DataLoader workers, as an epoch in training does.

    python benchmarks/bench_data.py --samples 4096 --workers 2

Prints one JSON object: samples/s per source and each source's ratio to ``memory``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from functools import partial

import torch
from torch.utils.data import DataLoader, TensorDataset

from cliplab.data import DataConfig, build_train_loader
from cliplab.data.synthetic import SyntheticCaptions
from cliplab.data.writers import write_files, write_webdataset
from cliplab.tokenizer import tokenize
from cliplab.transforms import image_transform


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=4096, help="dataset size (a multiple of the batch size)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads in the main process")
    return p.parse_args()


def time_epoch(batches) -> tuple[float, int]:
    start, n = time.perf_counter(), 0
    for batch in batches:
        n += len(batch[0]) if isinstance(batch, (list, tuple)) else len(batch)
    return time.perf_counter() - start, n


def in_memory_loader(samples, transform, tok, batch_size: int) -> DataLoader:
    images = torch.stack(
        [transform(s.image, generator=torch.Generator().manual_seed(i)) for i, s in enumerate(samples)]
    )
    texts = tok([s.caption for s in samples])
    return DataLoader(TensorDataset(images, texts), batch_size=batch_size, shuffle=True, drop_last=True)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    size = args.image_size
    transform = image_transform(size, train=True)
    tok = partial(tokenize, truncate=True)
    samples = [s for s in SyntheticCaptions(args.samples, seed=0, image_size=size)]
    results: dict[str, object] = {
        "samples": args.samples,
        "batch_size": args.batch_size,
        "image_size": size,
        "workers": args.workers,
        "cpus": os.cpu_count(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_files(samples, os.path.join(tmp, "files"))
        write_webdataset(samples, os.path.join(tmp, "shards"), shard_size=max(1, args.samples // 8))
        configs = {
            "manifest": DataConfig(source="manifest", path=str(manifest), workers=args.workers),
            "webdataset": DataConfig(
                source="webdataset",
                path=os.path.join(tmp, "shards"),
                workers=args.workers,
                shuffle_buffer=256,
            ),
            "synthetic": DataConfig(synthetic_size=args.samples, workers=args.workers),
        }
        rates = {}
        seconds, n = time_epoch(in_memory_loader(samples, transform, tok, args.batch_size))
        rates["memory"] = n / seconds
        for name, cfg in configs.items():
            loader = build_train_loader(
                cfg,
                transform=transform,
                tokenize=tok,
                batch_size=args.batch_size,
                seed=0,
                epoch=0,
                image_size=size,
            )
            seconds, n = time_epoch(loader)
            rates[name] = n / seconds
    results["samples_per_s"] = {k: round(v, 1) for k, v in rates.items()}
    results["ratio_to_memory"] = {k: round(v / rates["memory"], 4) for k, v in rates.items() if k != "memory"}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
