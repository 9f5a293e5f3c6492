"""`cliplab` command line: one small module per subcommand.

Each subcommand module defines ``add_arguments(parser)`` and ``run(args) -> int``; this file only
dispatches. Modules are imported lazily so `cliplab --help` does not import torch.
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
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cliplab", description="CLIP models: train, evaluate, use.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        _load(module).add_arguments(p)
    return parser


def _load(module: str):
    return importlib.import_module(f"cliplab.cli.{module}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    try:
        return int(_load(args._module).run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
