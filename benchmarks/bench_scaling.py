"""Scaling: how training, zero-shot evaluation and search grow with batch size, images and gallery size.

Three axes, each a table (``benchmarks/results/bench_scaling.json``) and a plot (``docs/perf/``):

1. **Training** samples/s and peak memory against batch size: ``demo-rn32`` (32 px, a small
   ModifiedResNet) and ViT-B/32 (224 px). Trainer.train_step (forward, loss, backward, fused AdamW) on
   batches made beforehand, so the data pipeline is not part of it (``bench_train.py`` measures that).
2. **Zero-shot evaluation** time and peak memory against the number of images: ``evaluate_zero_shot``
   end to end (preprocess PIL images, encode, build the classifier from 10 classes x 8 templates,
   score), ``demo-rn32``, batch 256, in-process loading.
3. **Search** query time and index memory against gallery size: cliplab's search index of the
   ``exact`` kind (``IndexFlatIP`` behind ``cliplab.search.index.SearchIndex``, the default up to
   100k vectors) over clustered random unit vectors (512-d, as ViT-B/32's), 64 queries of top-10
   per call. Index memory is FAISS's own size of the index (float32 vectors, 4 x 512 bytes each).

Every point runs in its own subprocess, so its peak resident memory (``ru_maxrss`` of the child,
``compare.peak_rss_mib_of``) is its own; the row also gives the peak minus that of a child that only
imports torch and cliplab ("import only"), which is what the work itself added. Times are medians
of repeats inside the child, after a warm-up. Each axis is fitted with a straight line
(time = fixed + per-unit x n) and a power law (time ~ n^p); p near 1 means linear growth, and the
line's coefficients predict a run ten times larger.

    .bench-venv/bin/python benchmarks/bench_scaling.py            # about 5 minutes on 2 cores
    .bench-venv/bin/python benchmarks/bench_scaling.py --quick    # fewer, smaller points (a smoke test)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FIGURES = ROOT / "docs" / "perf"
sys.path.insert(0, str(HERE))

from compare import Report, peak_rss_mib_of  # noqa: E402

TRAIN_POINTS = {"demo-rn32": [16, 32, 64, 128, 256], "ViT-B/32": [2, 4, 8, 16]}
EVAL_POINTS = [250, 500, 1000, 2000, 4000]
SEARCH_POINTS = [10_000, 30_000, 100_000, 300_000, 1_000_000]
QUICK = {
    "train": {"demo-rn32": [16, 64], "ViT-B/32": [2, 4]},
    "eval": [250, 1000],
    "search": [10_000, 100_000],
}


# --------------------------------------------------------------------------- the child processes


def child_train(model: str, batch: int, threads: int) -> dict:
    import torch

    from cliplab.data import DataConfig, build_train_loader
    from cliplab.training import load_config
    from cliplab.training.loop import Trainer

    steps, warmup = (6, 2) if model == "demo-rn32" else (2, 1)
    needed = (steps + warmup) * batch
    overrides = [f"--model={model}", f"--batch_size={batch}", f"--threads={threads}", "--eval_every=0",
                 "--tensorboard=false", "--checkpoint_every=0", f"--data.synthetic_size={needed}",
                 "--data.workers=0", f"--steps={steps + warmup}", "--warmup_steps=1"]  # fmt: skip
    cfg = load_config(None, overrides)
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, Path(tmp) / "run", progress=False)
        data = DataConfig(source="synthetic", synthetic_size=needed, workers=0)
        loader = build_train_loader(
            data, transform=trainer.train_transform, tokenize=trainer.tokenize, batch_size=batch,
            seed=0, epoch=0, image_size=trainer.preprocess_cfg.image_size,
        )  # fmt: skip
        batches = list(loader)[: steps + warmup]
        for b in batches[:warmup]:
            trainer.train_step(b)
        times = []
        for b in batches[warmup:]:
            t0 = time.perf_counter()
            trainer.train_step(b)
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    return {"step_s": step, "samples_per_s": batch / step, "steps": len(times)}


def child_eval(n: int, threads: int) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    import cliplab
    from cliplab.evaluation.datasets import InMemoryDataset
    from cliplab.evaluation.zeroshot import evaluate_zero_shot
    from cliplab.transforms import PreprocessConfig, image_transform

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = cliplab.create_model("demo-rn32").eval()
    size = model.config.vision.image_size
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)) for _ in range(n)]
    classes = [f"class {i}" for i in range(10)]
    templates = [f"a {kind} of a {{}}." for kind in ("photo", "drawing", "picture", "painting",
                                                     "sketch", "render", "close-up", "crop")]  # fmt: skip
    dataset = InMemoryDataset(
        images, [i % 10 for i in range(n)], classes, image_transform(PreprocessConfig(size))
    )

    def run():
        return evaluate_zero_shot(model, cliplab.tokenize, dataset, classes, templates, batch_size=256,
                                  workers=0, progress=False)  # fmt: skip

    run()  # warm-up
    times = []
    for _ in range(2 if n >= 2000 else 3):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return {"eval_s": statistics.median(times), "images_per_s": n / statistics.median(times)}


class _Sized:
    """The exact kind searches the FAISS index alone; the collection is only asked its length."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


def child_search(n: int, threads: int) -> dict:
    import faiss
    import numpy as np

    from cliplab.search.index import SearchIndex

    faiss.omp_set_num_threads(threads)
    dim, rng = 512, np.random.default_rng(0)
    centres = rng.standard_normal((4096, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(dim)
    for start in range(0, n, 100_000):  # in chunks: the generator's temporaries stay small
        rows = min(100_000, n - start)
        x = centres[rng.integers(0, len(centres), rows)] + rng.standard_normal(
            (rows, dim), dtype=np.float32
        ) / math.sqrt(dim)
        index.add(x / np.linalg.norm(x, axis=1, keepdims=True))
    search = SearchIndex(index, _Sized(n), {"kind": "exact", "params": {}})
    q = rng.standard_normal((64, dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    search.search(q[:8], 10)  # warm-up
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        search.search(q, 10)
        times.append(time.perf_counter() - t0)
    single = []
    for i in range(5):
        t0 = time.perf_counter()
        search.search(q[i], 10)
        single.append(time.perf_counter() - t0)
    return {"batch64_s": statistics.median(times), "query_ms": 1000 * statistics.median(times) / len(q),
            "single_query_ms": 1000 * statistics.median(single), "index_mib": faiss.serialize_index(index).nbytes / 2**20}  # fmt: skip


def child(args: argparse.Namespace) -> None:
    if args.point == "idle":
        import torch  # noqa: F401

        import cliplab  # noqa: F401

        out = {}
    elif args.point == "train":
        out = child_train(args.model, args.x, args.threads)
    elif args.point == "eval":
        out = child_eval(args.x, args.threads)
    else:
        out = child_search(args.x, args.threads)
    Path(args.out).write_text(json.dumps(out))


# --------------------------------------------------------------------------- the parent: runs and fits


def run_point(point: str, x: int, threads: int, tmp: Path, model: str = "") -> dict:
    out = tmp / f"{point}-{model.replace('/', '')}-{x}.json"
    cmd = [
        sys.executable,
        __file__,
        "--point",
        point,
        "--x",
        str(x),
        "--threads",
        str(threads),
        "--out",
        str(out),
    ]
    if model:
        cmd += ["--model", model]
    code, wall, peak = peak_rss_mib_of(cmd)
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {code}")
    result = json.loads(out.read_text())
    result.update(peak_rss_mib=round(peak, 1), child_wall_s=round(wall, 2))
    print(f"  {point} {model} x={x}: {result}", flush=True)
    return result


def fit(xs: list[float], ys: list[float]) -> dict:
    """Least squares y = a + b x, and the exponent p of y ~ x^p (slope in log-log)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    a = my - b * mx
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-12)) for y in ys]
    mlx, mly = sum(lx) / n, sum(ly) / n
    p = sum((u - mlx) * (v - mly) for u, v in zip(lx, ly, strict=True)) / sum((u - mlx) ** 2 for u in lx)
    ss_res = sum((y - (a + b * x)) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys) or 1e-12
    return {"fixed": a, "per_unit": b, "exponent": p, "r2": 1 - ss_res / ss_tot}


def plot(path: Path, title: str, xlabel: str, series: dict, ylabels: tuple[str, str]) -> None:
    """Two panels: the speed measure and peak memory, one line per series, log-log (slope 1 = linear)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, (xs, speed, memory) in series.items():
        axes[0].plot(xs, speed, "o-", label=name)
        axes[1].plot(xs, memory, "o-", label=name)
    for ax, ylabel in zip(axes, ylabels, strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def axis_train(report: Report, points: dict, threads: int, tmp: Path, idle: float) -> None:
    series = {}
    for model, batches in points.items():
        rows = [run_point("train", b, threads, tmp, model) for b in batches]
        for b, r in zip(batches, rows, strict=True):
            report.row(axis="training", model=model, batch_size=b, samples_per_s=round(r["samples_per_s"], 1),
                       step_s=round(r["step_s"], 4), peak_rss_mib=r["peak_rss_mib"],
                       work_mib=round(r["peak_rss_mib"] - idle, 1))  # fmt: skip
        step = fit(batches, [r["step_s"] for r in rows])
        memory = fit(batches, [r["peak_rss_mib"] for r in rows])
        report.notes.append(
            f"training {model}: step time = {step['fixed']:.3f} s + {1000 * step['per_unit']:.2f} ms x batch "
            f"(power {step['exponent']:.2f}, R^2 {step['r2']:.3f}); "
            + (f"samples/s levels off at about {1 / step['per_unit']:.0f}; " if step["per_unit"] > 0 else "")
            + f"peak memory = {memory['fixed']:.0f} MiB + "
            f"{memory['per_unit']:.2f} MiB x batch (R^2 {memory['r2']:.3f})"
        )
        series[model] = (batches, [r["samples_per_s"] for r in rows], [r["peak_rss_mib"] for r in rows])
    plot(FIGURES / "scaling_training.png", f"Training vs batch size ({threads} threads)", "batch size",
         series, ("samples/s", "peak RSS (MiB)"))  # fmt: skip
    report.figures.append("docs/perf/scaling_training.png")


def axis_eval(report: Report, points: list[int], threads: int, tmp: Path, idle: float) -> None:
    rows = [run_point("eval", n, threads, tmp) for n in points]
    for n, r in zip(points, rows, strict=True):
        report.row(axis="zero-shot evaluation", model="demo-rn32", images=n, eval_s=round(r["eval_s"], 3),
                   images_per_s=round(r["images_per_s"], 1), peak_rss_mib=r["peak_rss_mib"],
                   work_mib=round(r["peak_rss_mib"] - idle, 1))  # fmt: skip
    time_fit = fit(points, [r["eval_s"] for r in rows])
    memory = fit(points, [r["peak_rss_mib"] for r in rows])
    report.notes.append(
        f"zero-shot evaluation (demo-rn32, 10 classes x 8 templates): time = {time_fit['fixed']:.3f} s + "
        f"{1000 * time_fit['per_unit']:.3f} ms x images (power {time_fit['exponent']:.2f}, R^2 "
        f"{time_fit['r2']:.3f}); peak memory = {memory['fixed']:.0f} MiB + {1024 * memory['per_unit']:.1f} KiB "
        "x images (the images are held in memory here; from files only a batch is)"
    )
    series = {"demo-rn32": (points, [r["eval_s"] for r in rows], [r["peak_rss_mib"] for r in rows])}
    plot(FIGURES / "scaling_evaluation.png", f"Zero-shot evaluation vs images ({threads} threads)", "images",
         series, ("seconds", "peak RSS (MiB)"))  # fmt: skip
    report.figures.append("docs/perf/scaling_evaluation.png")


def axis_search(report: Report, points: list[int], threads: int, tmp: Path, idle: float) -> None:
    rows = [run_point("search", n, threads, tmp) for n in points]
    for n, r in zip(points, rows, strict=True):
        report.row(axis="search", index="exact (IndexFlatIP)", vectors=n, query_ms=round(r["query_ms"], 3),
                   single_query_ms=round(r["single_query_ms"], 3), index_mib=round(r["index_mib"], 1),
                   peak_rss_mib=r["peak_rss_mib"], work_mib=round(r["peak_rss_mib"] - idle, 1))  # fmt: skip
    batched = fit(points, [r["query_ms"] for r in rows])
    single = fit(points, [r["single_query_ms"] for r in rows])
    memory = fit(points, [r["index_mib"] for r in rows])
    report.notes.append(
        f"search, exact index: a query in a batch of 64 costs {batched['fixed']:.3f} ms + "
        f"{1e6 * batched['per_unit']:.3f} ms per million vectors (power {batched['exponent']:.2f}); a single "
        f"query {single['fixed']:.3f} ms + {1e6 * single['per_unit']:.1f} ms per million (power "
        f"{single['exponent']:.2f}); index memory {memory['per_unit'] * 2**20:.0f} bytes per vector "
        "(linear). Above 100k vectors cliplab builds IVF-PQ by default (64 bytes per vector, query time "
        "set by nprobe and rerank: bench_search.py)"
    )
    series = {"exact, batch of 64 (ms/query)": (points, [r["query_ms"] for r in rows], [r["index_mib"] for r in rows]),
              "exact, one query (ms)": (points, [r["single_query_ms"] for r in rows], [r["index_mib"] for r in rows])}  # fmt: skip
    plot(FIGURES / "scaling_search.png", f"Search vs gallery size ({threads} threads)", "vectors in the index",
         series, ("ms per query", "index size (MiB)"))  # fmt: skip
    report.figures.append("docs/perf/scaling_search.png")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch / FAISS threads in every point")
    p.add_argument("--axes", default="train,eval,search", help="which axes, comma-separated")
    p.add_argument("--quick", action="store_true", help="two small points per axis (a smoke test)")
    p.add_argument("--point", choices=["idle", "train", "eval", "search"], help=argparse.SUPPRESS)
    p.add_argument("--x", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--model", default="", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.point:
        child(args)
        return
    axes = [a.strip() for a in args.axes.split(",") if a.strip()]
    unknown = sorted(set(axes) - {"train", "eval", "search"})
    if unknown:
        raise SystemExit(f"--axes: unknown {unknown}; choose from train, eval, search")
    report = Report(
        name="bench_scaling",
        title="Scaling with batch size, images and gallery size",
        description=__doc__.split("\n\n")[1].strip() if __doc__ else "",
    )
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        idle = run_point("idle", 0, args.threads, tmp)["peak_rss_mib"]
        report.row(axis="baseline", what="import only (torch + cliplab)", peak_rss_mib=idle)
        if "train" in axes:
            axis_train(report, QUICK["train"] if args.quick else TRAIN_POINTS, args.threads, tmp, idle)
        if "eval" in axes:
            axis_eval(report, QUICK["eval"] if args.quick else EVAL_POINTS, args.threads, tmp, idle)
        if "search" in axes:
            axis_search(report, QUICK["search"] if args.quick else SEARCH_POINTS, args.threads, tmp, idle)
    report.notes.append(
        f"memory: peak resident set of each point's own process (ru_maxrss via compare.peak_rss_mib_of); "
        f"work_mib subtracts the {idle:.0f} MiB of a process that only imports torch and cliplab. "
        f"{args.threads} threads per point; whole run {time.perf_counter() - started:.0f} s"
    )
    report.print()
    print(f"wrote {report.write()}")


if __name__ == "__main__":
    main()
