"""`cliplab models`: named architectures and OpenAI's downloadable weights."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the configs as JSON")


def run(args: argparse.Namespace) -> int:
    import json

    import cliplab

    if args.json:
        print(json.dumps({n: cliplab.get_config(n).to_dict() for n in cliplab.list_configs()}, indent=2))
        return 0
    print("architectures (cliplab.create_model):", ", ".join(cliplab.list_configs()))
    print("pretrained weights (cliplab.load):   ", ", ".join(cliplab.available_models()))
    return 0
