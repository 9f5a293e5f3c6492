"""`cliplab train --config FILE [--out DIR] [--resume latest|DIR|FILE] [--key=value ...]`.

Several processes: ``torchrun --nproc_per_node N -m cliplab train ...`` (see the README's "Training
on several GPUs and machines"); without torchrun the same command trains in one process.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

ACCEPTS_OVERRIDES = True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", help="YAML or JSON file of settings (see configs/); defaults apply without one"
    )
    p.add_argument("--out", default="runs/train", help="run directory (default: runs/train)")
    p.add_argument("--resume", help="'latest' (this --out), a run directory or a checkpoint file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.set_defaults(overrides=[])
    p.epilog = "Any setting can be overridden as --key=value, e.g. --lr=1e-3 --data.workers=0 (see configs/)."


def run(args: argparse.Namespace) -> int:
    """One process, or one of several started by torchrun (its RANK/WORLD_SIZE/LOCAL_RANK are read here)."""
    from cliplab.training import load_config, train
    from cliplab.training.distributed import destroy_process_group, from_environment, init_process_group
    from cliplab.training.loop import training_device

    placement = from_environment()
    # Every rank logs its warnings; only rank 0 reports progress.
    level = logging.INFO if placement.rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format=f"%(levelname)s [rank {placement.rank}] %(name)s: %(message)s")
    cfg = load_config(_config_path(args), args.overrides)
    device = training_device(cfg.device, placement.world_size, placement.local_rank)
    init_process_group(placement, device, cfg.dist_timeout)
    try:
        summary = train(
            cfg,
            args.out,
            resume=args.resume,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            rank=placement.rank,
            world_size=placement.world_size,
            local_rank=placement.local_rank,
        )
    finally:
        destroy_process_group()
    if placement.rank == 0:
        print_summary(summary)
    return 130 if summary["interrupted"] else 0


def _config_path(args: argparse.Namespace) -> Path | None:
    """--config, or when resuming without one, the run's own resolved config.yaml."""
    from cliplab.errors import UsageError

    if args.config or not args.resume:
        return args.config
    target = Path(args.out) if args.resume == "latest" else Path(args.resume)
    run_dir = target if target.is_dir() else target.parent.parent  # RUN/checkpoints/step_N.pt
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise UsageError(
            f"--resume {args.resume}: no config.yaml in {run_dir}; pass the run's settings with --config"
        )
    return config


def print_summary(summary: dict) -> None:
    print(
        f"\nsteps {summary['steps']}/{summary['total_steps']}  final loss {summary['final_loss'] or float('nan'):.4f}  "
        f"{summary['samples_per_s']} samples/s  skipped samples {summary['skipped_samples']}  "
        f"non-finite steps {summary['nonfinite_steps']}"
    )
    if summary["zeroshot"]:
        print(f"\n{'zero-shot task':<20}{'top-1':>8}{'chance':>9}")
        for task, r in summary["zeroshot"].items():
            print(f"{task:<20}{r['top1']:>8.1%}{r['chance']:>9.1%}")
        print(f"{'mean':<20}{summary['zeroshot_mean']:>8.1%}")
    print(f"\nmodel: {summary['final_checkpoint']}")
