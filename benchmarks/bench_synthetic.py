"""Generation speed of the synthetic dataset, one process (DataLoader workers each get this rate).

    python benchmarks/bench_synthetic.py [--n 2000] [--sizes 32 64 128 224]

Prints one JSON line per image size with images/s, plus the caption-only (no pixels) rate.
"""

from __future__ import annotations

import argparse
import json
import time

from cliplab.data.synthetic import SyntheticCaptions, sample_scene, zero_shot_tasks


def rate(fn, n: int) -> float:
    fn(0)  # warm the font cache
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="samples per measurement")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 224])
    args = parser.parse_args()
    scenes = rate(lambda i: sample_scene(0, "train", i), args.n)
    print(json.dumps({"what": "scene+caption only", "per_s": round(scenes)}))
    for size in args.sizes:
        ds = SyntheticCaptions(10 * args.n, image_size=size)
        n = max(50, args.n * 64 * 64 // (size * size))  # fewer samples for big images
        print(
            json.dumps(
                {
                    "what": "train sample",
                    "image_size": size,
                    "images_per_s": round(rate(ds.__getitem__, n), 1),
                }
            )
        )
    start = time.perf_counter()
    tasks = zero_shot_tasks(image_size=64, per_class=20)
    count = sum(len(t.images) for t in tasks)
    print(
        json.dumps(
            {
                "what": "zero_shot_tasks(64, per_class=20)",
                "images": count,
                "seconds": round(time.perf_counter() - start, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
