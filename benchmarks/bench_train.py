"""Training throughput (samples/s) of the demo config from each data path, against model steps alone.

One process, one model, the same optimizer step (``Trainer.train_step``) in every row:

* ``memory``: batches made beforehand and kept as tensors; only the model step is timed (the ceiling),
* ``manifest``: PNG files + CSV manifest written to a temporary folder first, decoded and augmented
  while training,
* ``synthetic``: the built-in generator rendering every image on the fly,
* ``synthetic_cached``: the generator's images rendered once into memory (the demo config's own
  setting, when the data loader supports it); the one-time render is not timed.

Each row runs ``--warmup`` untimed steps, then ``--steps`` timed ones; the data rows time the loader
and the step together, as training does. The config is ``configs/demo.yaml`` when it exists, else
the ``tiny`` model at 64 px with batch 128.

    python benchmarks/bench_train.py                    # about 1-3 minutes on 2 cores
    python benchmarks/bench_train.py --steps 20 --json bench_train.json

Prints a table and one JSON object (samples/s per path and each path's ratio to ``memory``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from cliplab.data import DataConfig, build_train_loader
from cliplab.data.synthetic import SyntheticCaptions
from cliplab.data.writers import write_files
from cliplab.training import TrainConfig, load_config
from cliplab.training.loop import Trainer

DEMO = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
FALLBACK = ["--model=tiny", "--batch_size=128"]  # the tiny model is 64 px
QUIET = ["--eval_every=0", "--tensorboard=false", "--checkpoint_every=0"]
HAS_CACHE = "synthetic_cache" in {f.name for f in dataclasses.fields(DataConfig)}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--config", default=str(DEMO) if DEMO.exists() else None, help="training config (default: demo)"
    )
    p.add_argument("--steps", type=int, default=10, help="timed steps per data path")
    p.add_argument("--repeats", type=int, default=2, help="rounds over all paths; the best rate counts")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per data path")
    p.add_argument("--workers", type=int, default=None, help="data.workers (default: the config's)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--json", type=Path, help="also write the results here")
    return p.parse_args()


def time_steps(trainer: Trainer, batches, warmup: int, steps: int) -> float:
    """Samples per second over ``steps`` optimizer steps after ``warmup`` untimed ones."""
    it = iter(batches)
    for _ in range(warmup):
        trainer.train_step(next(it))
    n, start = 0, time.perf_counter()
    for _ in range(steps):
        batch = next(it)  # in the timed region: loading is part of a training step's cost
        trainer.train_step(batch)
        n += len(batch)
    return n / (time.perf_counter() - start)


def loader(trainer: Trainer, data: DataConfig):
    cfg = trainer.cfg
    return build_train_loader(
        data, transform=trainer.train_transform, tokenize=trainer.tokenize, batch_size=cfg.batch_size,
        seed=cfg.seed, epoch=0, image_size=trainer.preprocess_cfg.image_size,
    )  # fmt: skip


def data_paths(cfg: TrainConfig, needed: int, tmp: Path, image_size: int) -> dict[str, DataConfig]:
    """The DataConfig of each data path, every one with ``needed`` samples (one epoch covers the run)."""
    base = {"workers": cfg.data.workers}
    samples = SyntheticCaptions(needed, seed=0, image_size=image_size)
    manifest = write_files([samples[i] for i in range(needed)], tmp / "files", fmt="csv")
    paths = {
        "manifest": DataConfig(source="manifest", path=str(manifest), **base),
        "synthetic": DataConfig(source="synthetic", synthetic_size=needed, **base),
    }
    if HAS_CACHE:
        paths["synthetic_cached"] = DataConfig(
            source="synthetic", synthetic_size=needed, synthetic_cache=True, **base
        )
    return paths


def main() -> None:
    args = parse_args()
    overrides = QUIET + ([] if args.config else FALLBACK) + [f"--threads={args.threads}"]
    if args.workers is not None:
        overrides.append(f"--data.workers={args.workers}")
    needed = (args.warmup + args.steps) * load_config(args.config, overrides).batch_size
    # The trainer's own data source only sizes its epoch: keep it small and uncached.
    small = [f"--data.synthetic_size={needed}"] + (["--data.synthetic_cache=false"] if HAS_CACHE else [])
    cfg = load_config(args.config, overrides + small)
    torch.set_num_threads(args.threads)
    rates: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trainer = Trainer(cfg, tmp / "run", progress=False)
        size = trainer.preprocess_cfg.image_size
        paths = data_paths(cfg, needed, tmp, size)
        # (c): batches from the synthetic path, made once and kept as tensors.
        batches = list(loader(trainer, paths["synthetic"]))[: args.warmup + args.steps]
        # Rows alternate and the best of --repeats counts, so a burst of load elsewhere on a shared
        # machine does not land on one row only.
        for _ in range(args.repeats):
            rate = time_steps(trainer, batches, args.warmup, args.steps)
            rates["memory"] = max(rates.get("memory", 0.0), rate)
            for name, data in paths.items():
                rate = time_steps(trainer, loader(trainer, data), args.warmup, args.steps)
                rates[name] = max(rates.get(name, 0.0), rate)
    results = {
        "config": args.config or "tiny (fallback: configs/demo.yaml not found)",
        "model": cfg.model,
        "image_size": size,
        "batch_size": cfg.batch_size,
        "workers": cfg.data.workers,
        "threads": args.threads,
        "steps": args.steps,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "samples_per_s": {k: round(v, 1) for k, v in rates.items()},
        "ratio_to_memory": {k: round(v / rates["memory"], 3) for k, v in rates.items() if k != "memory"},
    }
    print_table(results)
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


def print_table(results: dict) -> None:
    print(
        f"\n{results['model']} {results['image_size']}px, batch {results['batch_size']}, "
        f"workers {results['workers']}, {results['threads']} threads, {results['steps']} timed steps"
    )
    print(f"{'data path':<18}{'samples/s':>11}{'vs memory':>11}")
    for name, rate in results["samples_per_s"].items():
        ratio = results["ratio_to_memory"].get(name, 1.0)
        print(f"{name:<18}{rate:>11.1f}{ratio:>10.1%}")
    print()


if __name__ == "__main__":
    main()
