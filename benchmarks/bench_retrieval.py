"""Speed and peak memory of chunked retrieval metrics on large random feature sets.

    python benchmarks/bench_retrieval.py                       # 20k images x 100k texts, D=512
    python benchmarks/bench_retrieval.py --n-images 5000 --n-texts 25000 --chunk-sizes 256 1024 5000

Each configuration runs in a fresh subprocess so that its peak resident memory (VmHWM) is its own.
Prints one JSON line per chunk size: seconds, peak RSS above the features, the largest similarity
block (chunk x gallery, float32) and throughput in similarity scores per second. A chunk size equal to
max(N, M) is the unchunked computation, for comparison. `--device cuda` measures on a GPU (peak
memory then from torch.cuda.max_memory_allocated).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _vm_hwm_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _block_elements(args: argparse.Namespace) -> int:
    # The larger of the two directions' score blocks: image chunk x texts and text chunk x images.
    n, m, c = args.n_images, args.n_texts, args.chunk
    return max(min(c, n) * m, min(c, m) * n)


def _child(args: argparse.Namespace) -> None:
    import torch
    import torch.nn.functional as F

    from cliplab.evaluation.retrieval import retrieval_metrics

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    device = torch.device(args.device)
    # Features are made in chunks so their creation does not set the memory high-water mark. Each
    # caption is a noisy copy of its image's feature, so recall is neither 0 nor 1 and the chunk
    # sizes have something to agree on.
    owners = torch.arange(args.n_texts) % args.n_images
    images = torch.empty(args.n_images, args.dim)
    texts = torch.empty(args.n_texts, args.dim)
    for s in range(0, args.n_images, 8192):
        images[s : s + 8192] = F.normalize(
            torch.randn(min(8192, args.n_images - s), args.dim, generator=g), dim=-1
        )
    for s in range(0, args.n_texts, 8192):
        own = images[owners[s : s + 8192]]
        texts[s : s + 8192] = F.normalize(own + 0.3 * torch.randn(own.shape, generator=g), dim=-1)
    images, texts = images.to(device), texts.to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = _vm_hwm_mib()
    start = time.perf_counter()
    metrics = retrieval_metrics(images, texts, owners, chunk_size=args.chunk)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _vm_hwm_mib()
    seconds = time.perf_counter() - start
    scores = 2 * args.n_images * args.n_texts  # both directions
    print(
        json.dumps(
            {
                "n_images": args.n_images,
                "n_texts": args.n_texts,
                "dim": args.dim,
                "chunk_size": args.chunk,
                "device": str(device),
                "threads": args.threads,
                "seconds": round(seconds, 3),
                "peak_mib_above_features": round(peak - base, 1),
                "block_mib": round(_block_elements(args) * 4 / 2**20, 1),
                "gscores_per_s": round(scores / seconds / 1e9, 3),
                "i2t_r@1": round(metrics["image_to_text_recall@1"], 5),
                "t2i_r@1": round(metrics["text_to_image_recall@1"], 5),
            }
        ),
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-images", type=int, default=20_000)
    p.add_argument("--n-texts", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--chunk-sizes", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--chunk", type=int, help=argparse.SUPPRESS)  # set in the child process
    args = p.parse_args()
    if args.chunk is not None:
        _child(args)
        return
    results = []
    for chunk in args.chunk_sizes:
        cmd = [sys.executable, __file__, "--chunk", str(chunk)]
        for name in ("n_images", "n_texts", "dim", "threads", "device"):
            cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(
                json.dumps({"chunk_size": chunk, "error": out.stderr.strip().splitlines()[-1:]}), flush=True
            )
            continue
        line = out.stdout.strip().splitlines()[-1]
        print(line, flush=True)
        results.append(json.loads(line))
    if len(results) > 1:  # the metrics must not depend on the chunk size
        assert len({r["i2t_r@1"] for r in results}) == 1, "chunk sizes disagree"
        fastest = min(results, key=lambda r: r["seconds"])
        print(
            json.dumps(
                {
                    "fastest_chunk": fastest["chunk_size"],
                    "ratios_to_fastest": {
                        r["chunk_size"]: round(r["seconds"] / fastest["seconds"], 2) for r in results
                    },
                }
            )
        )


if __name__ == "__main__":
    main()
