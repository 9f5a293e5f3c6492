"""`cliplab search DIR "a red car" [--image Q.jpg] [-k 20] [--json]`: query an index from the shell.

``DIR`` is an index folder or an embedding folder with ``index/`` in it. The model is the one
recorded at embedding time (checked by its weights' fingerprint) unless ``--model`` names another.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("index", metavar="DIR", help="index folder, or embedding folder holding index/")
    parser.add_argument("query", nargs="?", default=None, help="what the images should show")
    parser.add_argument("--image", default=None, help="find images like this image file instead")
    parser.add_argument("-k", type=int, default=20, help="number of results (default 20)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--model", default=None, help="another model than the one recorded at embedding time")
    parser.add_argument("--device", default=None, help="cpu, cuda... (default: cuda when available)")
    parser.add_argument("--mmap", action="store_true", help="memory-map the index instead of reading it")


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from cliplab.errors import UsageError
    from cliplab.search.searcher import Limits, Searcher

    if (args.query is None) == (args.image is None):
        raise UsageError(
            'give a text query or --image FILE (one of them), e.g. cliplab search DIR "a red car"'
        )
    if args.image is not None and not Path(args.image).is_file():
        raise UsageError(f"--image {args.image}: no such file")
    limits = Limits(max_k=max(args.k, 1), max_upload_bytes=2**40, max_image_pixels=2**40)
    searcher, note = Searcher.open(
        args.index, model=args.model, device=args.device, mmap=args.mmap, limits=limits
    )
    if note:
        print(f"note: {note}", file=sys.stderr)
    if args.image is not None:
        answer = searcher.search_image(Path(args.image).read_bytes(), args.k, name=args.image)
    else:
        answer = searcher.search_text(args.query, args.k)
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    print(f"{'rank':>4}  {'score':>6}  {'id':>8}  caption / source")
    for rank, r in enumerate(answer["results"], 1):
        print(f"{rank:>4}  {r['score']:6.3f}  {r['id']:>8}  {r['caption'] or r['source']}")
    return 0
