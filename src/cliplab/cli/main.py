"""`cliplab` command line: one small module per subcommand.

Each subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int``; this file only
dispatches. Modules are imported lazily so `cliplab --help` does not import torch.

Errors: this is the one place that turns the project's own error types (:class:`cliplab.errors.CliplabError`
and its subclasses) into a one-line message on stderr and exit status 2, like argparse does for a bad
flag. A traceback is printed only with ``--debug``. Subcommands raise; they do not print errors.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module under cliplab.cli, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("train", "train or fine-tune a CLIP model"),
    "data": ("data", "write the built-in synthetic dataset to disk"),
    "eval": ("evaluate", "zero-shot, linear-probe or retrieval evaluation"),
    "benchmark": ("benchmark", "run a suite of evaluations from a YAML file"),
    "zeroshot": ("zeroshot", "label images with free-text class names"),
    "models": ("models", "list named architectures and downloadable weights"),
    "embed": ("embed", "embed a folder, manifest or shards of images for search"),
    "index": ("index", "build a FAISS index over embedding folders"),
    "search": ("search", "query an index by text or example image"),
    "serve": ("serve", "serve a search page and JSON API over an index"),
    "export": ("export", "write a model for transformers, open_clip or ONNX Runtime"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (all of them when it is None)."""
    parser = argparse.ArgumentParser(prog="cliplab", description="CLIP models: train, evaluate, use.")
    parser.add_argument("--debug", action="store_true", help="show a full traceback for any error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        if command is None or name == command:
            _load(module).add_arguments(p)
    return parser


def _load(module: str):
    return importlib.import_module(f"cliplab.cli.{module}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in SUBCOMMANDS else None)
    args, extra = parser.parse_known_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    module = _load(args._module)
    if extra:
        # Subcommands that take free-form settings (``--key=value``) declare ACCEPTS_OVERRIDES.
        if not getattr(module, "ACCEPTS_OVERRIDES", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(getattr(args, "overrides", None) or []) + extra
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if getattr(args, "debug", False) or not is_user_error(exc):
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"cliplab {args.command}: error: {message}", file=sys.stderr)
        return 2


def is_user_error(exc: BaseException) -> bool:
    """An error caused by the user's input, whose message says what to do (no traceback needed)."""
    from cliplab.errors import CliplabError

    return isinstance(exc, CliplabError)


if __name__ == "__main__":
    sys.exit(main())
