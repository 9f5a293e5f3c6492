"""`cliplab benchmark`: run a suite of evaluations (zero-shot, linear probe, retrieval) over models.

cliplab benchmark suite.yaml --out results/

Writes OUT/results.md (a table per task) and OUT/results.json; features are cached under OUT/cache
unless the suite says ``cache: false``. The exit code is 1 if any task failed, 2 for a bad suite.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "suite", type=Path, help="suite YAML: models: [{name, path}], tasks: [{task, dataset, data, ...}]"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("benchmark-results"), help="output folder (default: %(default)s)"
    )
    parser.add_argument("--device", default=None, help="override the suite's device (cpu, cuda, cuda:1...)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import sys

    from cliplab.device import resolve_device
    from cliplab.errors import UsageError
    from cliplab.evaluation.benchmark import read_suite, run_suite

    if args.out.exists() and not args.out.is_dir():
        raise UsageError(
            f"--out {args.out} is a file; the benchmark writes a folder (results.md, results.json)"
        )
    suite = read_suite(args.suite)
    if args.device is not None:
        suite = dataclasses.replace(suite, device=args.device)
    resolve_device(suite.device)  # a missing GPU is reported now, not once per task
    records = run_suite(suite, args.out, progress=not args.no_progress)
    failed = [r for r in records if "error" in r]
    for r in failed:
        print(f"FAILED {r['model']} / {r['task']} / {r['dataset']}: {r['error']}", file=sys.stderr)
    print(
        f"{len(records) - len(failed)}/{len(records)} tasks succeeded; results in {args.out / 'results.md'}"
    )
    return 1 if failed else 0
