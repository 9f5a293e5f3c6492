"""Search: embedding throughput against the plain way, and query latency over HTTP at 10k and 1M vectors.

1. Embedding (images/s, decode + preprocess + encode + write). ``cliplab embed``'s pipeline
   (``cliplab.search.embed``: one DataLoader over part-aligned batches, parts written as .npy +
   Parquet) against the plain way clip-retrieval's ``clip inference`` uses: a torch ``Dataset`` that
   opens each file and applies the ``preprocess`` returned by ``cliplab.load``, a ``DataLoader``
   with the same batch size and workers, ``model.encode_image`` and one ``np.save`` at the end.
   clip-retrieval itself (and open_clip) cannot be installed here: open_clip imports torchvision,
   which does not import beside torch 2.13's CPU build. Same weights (random), same JPEG files.
2. Query latency over HTTP: ``cliplab serve`` (a subprocess, the real command) over random unit
   vectors (the index part does not care where vectors come from), ViT-B/32 text tower for the
   text queries. 10k vectors get the exact index (the default below 100k), 1M the default
   approximate one (IVF-PQ, search breadth tuned to recall@10 >= 0.95 where reachable). Two kinds
   of random vectors: ``clustered`` (around 4,096 random centres, each point at cosine ~0.7 to its
   centre, as embeddings of a real collection cluster) and ``uniform`` on the sphere, the worst case
   for any approximate index: in 512 dimensions a point's nearest neighbours are barely nearer than
   the rest, so the tuner widens the search to every list and recall stays low. Reported: p50/p99
   of text queries (new texts), repeated texts (cache hits) and image-by-id queries, k=20, one
   client, keep-alive.

    python benchmarks/bench_search.py --json benchmarks/results/bench_search.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import cliplab
from cliplab.inference import default_workers, model_fingerprint, open_images
from cliplab.search.embed import METADATA_COLUMNS, model_identity, plan_embedding, run_embedding


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=256, help="JPEG files embedded (640x480)")
    p.add_argument("--config", default="ViT-B/32", help="architecture for the embedding comparison")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: all cores)")
    p.add_argument(
        "--runs",
        nargs="+",
        default=["10000:uniform", "1000000:clustered", "1000000:uniform"],
        help="latency runs as VECTORS:DISTRIBUTION (uniform or clustered)",
    )
    p.add_argument("--queries", type=int, default=200, help="HTTP queries per kind")
    p.add_argument("--json", default=None, help="also write the results here")
    return p.parse_args()


# ------------------------------------------------------------------------------------ embedding


def write_jpegs(folder: Path, n: int) -> None:
    from cliplab.data.synthetic import SyntheticCaptions

    data = SyntheticCaptions(n, image_size=240)
    for i in range(n):
        folder.joinpath(f"{i // 100:03d}").mkdir(parents=True, exist_ok=True)
        data[i].image.resize((640, 480), Image.Resampling.BICUBIC).save(
            folder / f"{i // 100:03d}" / f"{i:05d}.jpg", quality=90
        )


class PlainFiles(torch.utils.data.Dataset):
    """clip-retrieval's reader, reduced to what matters: open, preprocess, return."""

    def __init__(self, paths: list[str], preprocess) -> None:
        self.paths, self.preprocess = paths, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.preprocess(Image.open(self.paths[i]))


def plain_embed(model, preprocess, paths: list[str], batch_size: int, workers: int, out: Path) -> float:
    start = time.perf_counter()
    loader = torch.utils.data.DataLoader(
        PlainFiles(paths, preprocess), batch_size=batch_size, num_workers=workers
    )
    chunks = []
    with torch.no_grad():
        for batch in loader:
            chunks.append(F.normalize(model.encode_image(batch), dim=-1).numpy().astype(np.float16))
    np.save(out, np.concatenate(chunks))
    return time.perf_counter() - start


def cliplab_embed(
    model, preprocess, spec: str, folder: Path, out: Path, batch_size: int, workers: int
) -> float:
    start = time.perf_counter()
    images = open_images(folder)
    job = plan_embedding(out, images, str(folder), model_identity(model, preprocess, spec))
    run_embedding(job, model, preprocess, batch_size=batch_size, workers=workers, progress=False)
    return time.perf_counter() - start


def bench_embedding(args, tmp: Path) -> dict:
    folder = tmp / "jpegs"
    write_jpegs(folder, args.images)
    paths = sorted(str(p) for p in folder.rglob("*.jpg"))
    torch.manual_seed(0)
    spec = cliplab.save(cliplab.create_model(args.config), tmp / "model-embed")
    model, preprocess = cliplab.load(spec)
    workers = default_workers() if args.workers is None else args.workers
    cliplab_embed(
        model, preprocess, str(spec), folder, tmp / "warm", args.batch_size, workers
    )  # page cache, threads
    plain = plain_embed(model, preprocess, paths, args.batch_size, workers, tmp / "plain.npy")
    ours = cliplab_embed(model, preprocess, str(spec), folder, tmp / "emb", args.batch_size, workers)
    a = np.load(tmp / "plain.npy", allow_pickle=False).astype(np.float32)
    b = np.load(tmp / "emb" / "part-00000.npy", allow_pickle=False).astype(np.float32)
    return {"config": args.config, "images": len(paths), "image_size": "640x480 JPEG", "batch_size": args.batch_size,
            "workers": workers, "torch_threads": torch.get_num_threads(),
            "images_per_s": {"plain_dataloader": round(len(paths) / plain, 2), "cliplab_embed": round(len(paths) / ours, 2)},
            "ratio": round(plain / ours, 3), "max_abs_diff": float(np.abs(a - b).max())}  # fmt: skip


# ------------------------------------------------------------------------------------ latency


def random_embedding_folder(
    folder: Path, n: int, identity: dict, distribution: str, part: int = 50_000, seed: int = 0
) -> None:
    """An embedding folder of ``n`` random unit vectors in cliplab embed's layout (see cliplab.search.embed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    dim = identity["config"]["embed_dim"]
    centres = rng.standard_normal((4096, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    parts = -(-n // part)
    for p in range(parts):
        rows = min(part, n - p * part)
        x = rng.standard_normal((rows, dim), dtype=np.float32)
        if distribution == "clustered":  # noise of norm ~1 around a unit centre: cosine ~0.7 to it
            x = centres[rng.integers(0, len(centres), rows)] + x / np.sqrt(dim)
        np.save(
            folder / f"part-{p:05d}.npy", (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)
        )
        ids = np.arange(p * part, p * part + rows)
        columns = {"id": ids, "source": [f"random/{i}.jpg" for i in ids], "caption": [f"vector {i}" for i in ids],
                   "width": np.full(rows, 640, np.int32), "height": np.full(rows, 480, np.int32),
                   "file": ["/nonexistent"] * rows, "offset": np.zeros(rows, np.int64), "size": np.full(rows, -1)}  # fmt: skip
        pq.write_table(pa.table({c: columns[c] for c in METADATA_COLUMNS}), folder / f"part-{p:05d}.parquet")
        (folder / f"part-{p:05d}.skipped.json").write_text("[]")
    info = {"format": "cliplab-embeddings-v1", "model": identity, "embed_dim": dim, "dtype": "float16",
            "part_size": part, "data": {"spec": "random", "kind": "random", "count": n, "fingerprint": str(seed)},
            "n_embedded": n, "n_skipped": 0, "parts": parts, "complete": True}  # fmt: skip
    (folder / "embed.json").write_text(json.dumps(info))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentiles(times: list[float]) -> dict:
    ms = np.array(times) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
    }


def measure_http(index_dir: Path, n: int, queries: int) -> dict:
    import httpx

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "cliplab", "serve", str(index_dir), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=60) as client:
            deadline = time.monotonic() + 600
            while True:
                try:
                    client.get("/api/info")
                    break
                except httpx.TransportError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"cliplab serve did not start: {server.stdout.read()[-2000:]}"
                        ) from None
                    time.sleep(0.5)
            rng = np.random.default_rng(1)
            kinds = {
                "text_new": [
                    ("/api/search", {"q": f"a photo of {i} dogs on a red car", "k": 20})
                    for i in range(queries)
                ],
                "text_cached": [("/api/search", {"q": "a photo of 0 dogs on a red car", "k": 20})] * queries,
                "by_id": [(f"/api/similar/{int(r)}", {"k": 20}) for r in rng.integers(0, n, queries)],
            }
            for url, params in kinds["by_id"][:10] + kinds["text_new"][:1]:  # warm-up
                client.get(url, params=params).raise_for_status()
            out = {}
            for kind, requests in kinds.items():
                times = []
                for url, params in requests:
                    start = time.perf_counter()
                    client.get(url, params=params).raise_for_status()
                    times.append(time.perf_counter() - start)
                out[kind] = _percentiles(times)
            return out
    finally:
        server.terminate()
        server.wait(30)


def bench_latency(args, tmp: Path) -> list[dict]:
    from cliplab.search.index import IndexSettings, build_index

    torch.manual_seed(0)
    spec = cliplab.save(cliplab.create_model("ViT-B/32"), tmp / "model-serve")
    model, preprocess = cliplab.load(spec)
    identity = model_identity(model, preprocess, str(spec))
    assert identity["fingerprint"] == model_fingerprint(model)
    del model
    results = []
    for run in args.runs:
        n, distribution = int(run.split(":")[0]), run.split(":")[1]
        folder = tmp / f"random-{n}-{distribution}"
        start = time.perf_counter()
        random_embedding_folder(folder, n, identity, distribution)
        written = time.perf_counter() - start
        info = build_index([folder], folder / "index", IndexSettings(queries=200), progress=False)
        http = measure_http(folder, n, args.queries)
        results.append({"vectors": n, "distribution": distribution, "dim": info["dim"], "kind": info["kind"], "params": info["params"],
                        "recall_at_10": round(info["recall_at_10"], 4), "recall_queries": info["recall_queries"],
                        "write_seconds": round(written, 1), "build_seconds": info["build_seconds"],
                        "index_bytes": os.path.getsize(folder / "index" / "index.faiss"), "http": http})  # fmt: skip
        print(json.dumps(results[-1]), flush=True)
        shutil.rmtree(folder)  # 1M float16 vectors take 1 GB of disk
    return results


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        embedding = bench_embedding(args, Path(tmp))
        print(json.dumps(embedding), flush=True)
        latency = bench_latency(args, Path(tmp))
    result = {"embedding": embedding, "latency": latency, "cpu_cores": default_workers()}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
