"""`cliplab serve DIR --port 8000`: the search page and its JSON API (OpenAPI docs at /docs).

The model and the index are loaded once, before the server starts; see
:mod:`cliplab.search.service` for the routes and the limits on requests.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("index", metavar="DIR", help="index folder, or embedding folder holding index/")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)"
    )
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default=None, help="another model than the one recorded at embedding time")
    parser.add_argument("--device", default=None, help="cpu, cuda... (default: cuda when available)")
    parser.add_argument("--mmap", action="store_true", help="memory-map the index instead of reading it")
    parser.add_argument(
        "--max-k", type=int, default=100, help="largest k a request may ask for (default 100)"
    )
    parser.add_argument(
        "--max-upload-mb", type=float, default=10.0, help="largest image upload (default 10 MB)"
    )
    parser.add_argument(
        "--max-pixels", type=int, default=40_000_000, help="largest uploaded image (default 40M pixels)"
    )
    parser.add_argument("--max-query-chars", type=int, default=1000, help="longest text query (default 1000)")


def run(args: argparse.Namespace) -> int:
    import sys

    from cliplab.errors import UsageError
    from cliplab.search.searcher import Limits, Searcher

    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be 1-65535, got {args.port}")
    try:
        import uvicorn

        from cliplab.search.service import create_app
    except ImportError:
        raise UsageError("cliplab serve needs fastapi and uvicorn: pip install 'cliplab[search]'") from None
    limits = Limits(
        max_k=args.max_k, max_upload_bytes=int(args.max_upload_mb * 2**20), max_image_pixels=args.max_pixels,
        max_query_chars=args.max_query_chars,
    )  # fmt: skip
    searcher, note = Searcher.open(
        args.index, model=args.model, device=args.device, mmap=args.mmap, limits=limits
    )
    if note:
        print(f"note: {note}", file=sys.stderr)
    print(
        f"serving {len(searcher)} images on http://{args.host}:{args.port}/ (API docs at /docs)", flush=True
    )
    uvicorn.run(create_app(searcher), host=args.host, port=args.port, log_level="warning")
    return 0
