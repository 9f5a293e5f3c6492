"""Zero-shot evaluation throughput: images/s of ``evaluate_zero_shot`` over an image folder.

Writes N synthetic PNG images as an image folder (cliplab's built-in zero-shot tasks), then times the
whole protocol (decode, preprocess, encode, classifier, metrics) four ways:

* ``one_at_a_time``: the obvious loop, one image per forward pass, no DataLoader (on a subset),
* ``batched_0_workers``: ``evaluate_zero_shot`` with batches but images decoded in this process,
* ``batched_all_workers``: batches plus one DataLoader worker per core (the default),
* ``cached``: a second run reading the image features from the on-disk cache.

    python benchmarks/bench_eval.py --config tiny --images 1024 --batch-size 128

Prints one JSON object: images/s of each and its ratio to ``one_at_a_time``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch
import torch.nn.functional as F

from cliplab.data.synthetic import zero_shot_tasks
from cliplab.data.writers import write_image_folder
from cliplab.evaluation.datasets import ImageFolderDataset
from cliplab.evaluation.features import default_workers
from cliplab.evaluation.zeroshot import evaluate_zero_shot
from cliplab.models import build_model, get_config
from cliplab.tokenizer import tokenize
from cliplab.transforms import image_transform, load_image
from cliplab.zeroshot import build_zero_shot_classifier


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="tiny", help="model architecture (random weights; speed only)")
    p.add_argument(
        "--images", type=int, default=1024, help="number of images (spread over the colour task's 8 classes)"
    )
    p.add_argument(
        "--image-size", type=int, default=96, help="side of the written PNGs (resized by the preprocessing)"
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: all cores)")
    p.add_argument("--baseline-images", type=int, default=128, help="images timed for the one-at-a-time loop")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    return p.parse_args()


def one_at_a_time(model, preprocess, dataset: ImageFolderDataset, templates: list[str], n: int) -> float:
    """Seconds for the plain loop over the first ``n`` images (classifier built the same way)."""
    start = time.perf_counter()
    classifier = build_zero_shot_classifier(model, tokenize, dataset.classnames, templates, progress=False)
    correct = 0
    with torch.inference_mode():
        for path, label in list(zip(dataset.paths, dataset.labels, strict=True))[:n]:
            feats = F.normalize(model.encode_image(preprocess(load_image(path)).unsqueeze(0)), dim=-1)
            correct += int((feats @ classifier).argmax() == label)
    return time.perf_counter() - start


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    workers = default_workers() if args.workers is None else args.workers
    torch.manual_seed(0)
    model = build_model(get_config(args.config)).eval()
    preprocess = image_transform(model.config.vision.image_size)
    per_class = -(-args.images // 8)
    (task,) = zero_shot_tasks(image_size=args.image_size, per_class=per_class, names=["colour"])
    with tempfile.TemporaryDirectory() as tmp:
        root = write_image_folder(task, os.path.join(tmp, "colour"))
        dataset = ImageFolderDataset(root, preprocess)
        n = len(dataset)

        def run(w: int, cache: str | None = None) -> None:
            evaluate_zero_shot(
                model,
                tokenize,
                dataset,
                None,
                task.templates,
                batch_size=args.batch_size,
                workers=w,
                cache_path=cache,
                progress=False,
            )

        n_base = min(args.baseline_images, n)
        seconds = {
            "one_at_a_time": one_at_a_time(model, preprocess, dataset, task.templates, n_base),
            "batched_0_workers": timed(lambda: run(0)),
            "batched_all_workers": timed(lambda: run(workers)),
        }
        cache = os.path.join(tmp, "cache")
        run(workers, cache)  # fill
        seconds["cached"] = timed(lambda: run(workers, cache))
    rate = {k: (n_base if k == "one_at_a_time" else n) / s for k, s in seconds.items()}
    print(
        json.dumps(
            {
                "config": args.config,
                "images": n,
                "batch_size": args.batch_size,
                "workers": workers,
                "torch_threads": torch.get_num_threads(),
                "images_per_s": {k: round(v, 1) for k, v in rate.items()},
                "ratio_to_one_at_a_time": {k: round(v / rate["one_at_a_time"], 2) for k, v in rate.items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
