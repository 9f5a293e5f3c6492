"""`cliplab zeroshot IMAGE... --labels "dog,cat,car" --model CKPT`: label images with free text.

Prints, for each image, the probability of each label: the softmax over labels of
``logit_scale * cosine(image, label)``, where a label's text embedding averages its prompts (the
ImageNet templates by default; ``--templates none`` uses each label as written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--labels", required=True, help='comma-separated class names, e.g. "dog,cat,car"')
    parser.add_argument(
        "--model", required=True, help="checkpoint path or model name (anything cliplab.load accepts)"
    )
    parser.add_argument(
        "--templates",
        default="imagenet",
        help="templates file, a set name (imagenet, cifar10...), or 'none' to use each label as the prompt "
        "(default imagenet: the paper's 80 templates)",
    )
    parser.add_argument("--top", type=int, default=5, help="labels shown per image (default 5; 0 = all)")
    parser.add_argument("--device", default=None, help="cpu, cuda... (default: cuda when available)")
    parser.add_argument(
        "--json", dest="json_out", default=None, metavar="OUT", help="also write the probabilities as JSON"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def parse_labels(text: str) -> list[str]:
    """Split ``"dog, cat,car"`` into names; empty and repeated names are an error."""
    from cliplab.errors import UsageError

    labels = [s.strip() for s in text.split(",")]
    if not all(labels):
        raise UsageError(f"--labels {text!r} has an empty name; separate names with single commas")
    repeated = sorted({s for s in labels if labels.count(s) > 1})
    if repeated:
        raise UsageError(f"--labels repeats {repeated}; each label must appear once")
    return labels


def run(args: argparse.Namespace) -> int:
    import json

    import torch

    import cliplab
    from cliplab.device import resolve_device
    from cliplab.errors import UsageError
    from cliplab.fileio import atomic_write_text
    from cliplab.transforms import ImageLoadError, load_image
    from cliplab.zeroshot import build_zero_shot_classifier, load_templates, zero_shot_logits

    labels = parse_labels(args.labels)
    templates = ["{}"] if args.templates.lower() == "none" else load_templates(args.templates)
    if args.top < 0:
        raise UsageError(f"--top must be >= 0, got {args.top}")
    if args.json_out is not None and Path(args.json_out).is_dir():
        raise UsageError(f"--json {args.json_out} is a directory; give a file name")
    device = resolve_device(args.device)
    model, preprocess = cliplab.load(args.model, device=device)
    classifier = build_zero_shot_classifier(
        model, cliplab.tokenize, labels, templates, progress=not args.no_progress
    )
    scale = model.logit_scale.exp().item()
    results, failed = {}, 0
    for path in args.images:
        try:
            image = preprocess(load_image(path)).unsqueeze(0).to(device)
        except ImageLoadError as exc:
            print(f"{path}: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        with torch.inference_mode():
            probs = zero_shot_logits(model.encode_image(image), classifier, scale).softmax(dim=-1)[0].cpu()
        order = sorted(range(len(labels)), key=lambda i: (-probs[i].item(), i))
        results[path] = {labels[i]: probs[i].item() for i in order}
        print(path)
        for i in order[: args.top or len(labels)]:
            print(f"  {probs[i].item():7.2%}  {labels[i]}")
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps(results, indent=2) + "\n")
    return 1 if failed else 0
