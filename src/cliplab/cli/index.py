"""`cliplab index DIR [DIR ...]`: a FAISS index over embedding folders, with its recall@10 measured.

Exact search up to ``--exact-max`` vectors, an approximate index (IVF-PQ, or ``--kind hnsw``) above;
see :mod:`cliplab.search.index`. One folder's index goes to ``DIR/index`` unless ``--out`` says
otherwise; several folders merge into one index at ``--out``.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "folders", nargs="+", metavar="DIR", help="embedding folders written by cliplab embed"
    )
    parser.add_argument("--out", default=None, help="index folder (default: DIR/index for one folder)")
    parser.add_argument(
        "--kind", default="auto", choices=("auto", "exact", "ivfpq", "hnsw"), help="index kind (default auto)"
    )
    parser.add_argument(
        "--exact-max", type=int, default=100_000, help="auto: exact search up to this many vectors"
    )
    parser.add_argument(
        "--target-recall", type=float, default=0.95, help="recall@10 the search breadth is tuned to"
    )
    parser.add_argument(
        "--queries", type=int, default=1000, help="held-out queries for measuring recall (default 1000)"
    )
    parser.add_argument(
        "--nlist", type=int, default=None, help="ivfpq: inverted lists (default ~sqrt(n), a power of 2)"
    )
    parser.add_argument(
        "--pq-m", type=int, default=None, help="ivfpq: sub-quantisers, dividing the dimension (default dim/8)"
    )
    parser.add_argument(
        "--rerank", type=int, default=4, help="ivfpq: candidates re-scored exactly per result (default 4)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing index in the output folder"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cliplab.errors import UsageError
    from cliplab.search.index import IndexSettings, build_index

    if args.out is None and len(args.folders) > 1:
        raise UsageError("several embedding folders merge into one index: name its folder with --out")
    out = Path(args.out) if args.out else Path(args.folders[0]) / "index"
    settings = IndexSettings(
        kind=args.kind, exact_max=args.exact_max, target_recall=args.target_recall, queries=args.queries,
        rerank=args.rerank, nlist=args.nlist, pq_m=args.pq_m, seed=args.seed,
    )  # fmt: skip
    info = build_index(args.folders, out, settings, overwrite=args.overwrite, progress=not args.no_progress)
    params = ", ".join(f"{k} {v}" for k, v in info["params"].items())
    print(f"index: {info['kind']} over {info['n']} vectors of {info['dim']} dims ({params}) -> {out}")
    print(
        f"recall@10 against exact search: {info['recall_at_10']:.4f} on {info['recall_queries']} held-out queries; "
        f"built in {info['build_seconds']:.1f} s"
    )
    return 0
