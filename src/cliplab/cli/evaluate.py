"""`cliplab eval {zeroshot,linear-probe,retrieval}`: evaluate a model, print a table, write JSON.

Examples::

    cliplab eval zeroshot --model runs/demo/final.safetensors --data shapes/test --json zs.json
    cliplab eval zeroshot --model ViT-B/32 --data imagenet/val --classnames imagenet --templates imagenet
    cliplab eval linear-probe --model ckpt.safetensors --train shapes/train --test shapes/test
    cliplab eval retrieval --model ckpt.safetensors --data captions.jsonl
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", required=True, help="checkpoint path or model name (anything cliplab.load accepts)"
    )
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    p.add_argument(
        "--workers", type=int, default=None, help="DataLoader worker processes (default: all cores)"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: cuda when available)")
    p.add_argument(
        "--cache-dir", default=None, help="reuse image features across runs and protocols from this folder"
    )
    p.add_argument(
        "--json", dest="json_out", default=None, metavar="OUT", help="write the results as JSON to OUT"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True)
    zs = sub.add_parser("zeroshot", help="zero-shot classification of a labelled image set")
    _common(zs)
    zs.add_argument(
        "--data",
        required=True,
        help="image folder, CSV/JSONL manifest, webdataset shards, synthetic:<task> or transfer:<set>",
    )
    zs.add_argument(
        "--classnames",
        default=None,
        help="class names: text/JSON file, per-class prompts JSON, or a set name",
    )
    zs.add_argument(
        "--templates",
        default=None,
        help="templates file (one per line, '{}' marks the class) or a set name: imagenet, cifar10... "
        "(default: the data's templates.txt, else imagenet)",
    )
    zs.add_argument("--label-column", default="label", help="label column of a manifest (default 'label')")
    zs.add_argument(
        "--path-column", default=None, help="image path column of a manifest (default filepath/path/image)"
    )
    zs.add_argument(
        "--confusion", default=None, metavar="OUT.png", help="draw the confusion matrix (up to 50 classes)"
    )

    lp = sub.add_parser("linear-probe", help="logistic regression on frozen image features")
    _common(lp)
    lp.add_argument("--train", required=True, help="training split (same formats as --data)")
    lp.add_argument("--test", required=True, help="test split")
    lp.add_argument(
        "--val-fraction", type=float, default=0.2, help="held out of --train to choose C (default 0.2)"
    )
    lp.add_argument("--seed", type=int, default=0)

    rt = sub.add_parser("retrieval", help="image-text retrieval recall@k")
    _common(rt)
    rt.add_argument("--data", required=True, help="captions file (CSV/JSONL, COCO or Karpathy JSON)")
    rt.add_argument("--chunk-size", type=int, default=1024, help="queries scored at once (bounds memory)")
    rt.add_argument(
        "--images", help="folder the image paths are relative to (default: the captions file's folder)"
    )
    rt.add_argument(
        "--image-column",
        default=None,
        help="CSV/JSONL column holding the image path (default filepath/path/image)",
    )
    rt.add_argument(
        "--caption-column", default=None, help="CSV/JSONL column holding the caption (default caption/text)"
    )
    rt.add_argument("--split", default="test", help="Karpathy-format split to evaluate (default: test)")


def validate(args: argparse.Namespace) -> None:
    """Every flag checked before a model is loaded or a feature extracted; a UsageError names it."""
    from cliplab.errors import UsageError

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers is not None and args.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {args.workers}")
    if args.protocol == "linear-probe" and not 0 < args.val_fraction < 1:
        raise UsageError(f"--val-fraction must be between 0 and 1 (exclusive), got {args.val_fraction}")
    if args.protocol == "retrieval" and args.chunk_size < 1:
        raise UsageError(f"--chunk-size must be >= 1, got {args.chunk_size}")
    if getattr(args, "confusion", None):
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:
            raise UsageError(
                "--confusion draws with matplotlib, which is not installed: pip install 'cliplab[eval]'"
            )
    for flag, out in (("--json", args.json_out), ("--confusion", getattr(args, "confusion", None))):
        if out is not None and Path(out).is_dir():
            raise UsageError(f"{flag} {out} is a directory; give a file name")
    if args.cache_dir is not None and Path(args.cache_dir).exists() and not Path(args.cache_dir).is_dir():
        raise UsageError(f"--cache-dir {args.cache_dir} is a file; give a folder")
    inputs = {"zeroshot": ("--data",), "linear-probe": ("--train", "--test"), "retrieval": ("--data",)}
    for flag in inputs[args.protocol]:
        value = getattr(args, flag[2:].replace("-", "_"))
        if not str(value).startswith(BUILTIN_SCHEMES) and not _exists(value):
            raise UsageError(f"{flag} {value}: no such file, folder or shard pattern")


# Built-in sets named instead of read from a path (see evaluation.datasets.load_classification_dataset).
BUILTIN_SCHEMES = ("synthetic:", "transfer:")


def _exists(spec: str) -> bool:
    """A path, or a shard pattern (``shards/{000..009}.tar``) whose folder exists."""
    path = Path(spec)
    return path.exists() or ("{" in spec and path.parent.is_dir())


def run(args: argparse.Namespace) -> int:
    import json

    import cliplab
    from cliplab.device import resolve_device
    from cliplab.fileio import atomic_write_text

    validate(args)
    device = str(resolve_device(args.device))
    model, preprocess = cliplab.load(args.model, device=device)
    protocol = {"zeroshot": _zeroshot, "linear-probe": _linear_probe, "retrieval": _retrieval}[args.protocol]
    result = {"model": str(args.model), **protocol(args, model, preprocess, device)}
    print(format_table(result))
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps(result, indent=2) + "\n")
        print(f"results written to {args.json_out}")
    return 0


def _zeroshot(args, model, preprocess, device: str) -> dict[str, Any]:
    from cliplab.evaluation.metrics import CONFUSION_PNG_MAX_CLASSES, save_confusion_matrix_png
    from cliplab.evaluation.zeroshot import evaluate_zero_shot, resolve_prompts
    from cliplab.tokenizer import tokenize

    dataset, classnames, templates = resolve_prompts(
        args.data,
        preprocess,
        args.classnames,
        args.templates,
        path_column=args.path_column,
        label_column=args.label_column,
        synthetic_image_size=model.image_size,  # built-in sets are drawn at the model's input size
    )
    if args.confusion and len(classnames) > CONFUSION_PNG_MAX_CLASSES:
        from cliplab.errors import UsageError

        raise UsageError(
            f"--confusion: {len(classnames)} classes is over the {CONFUSION_PNG_MAX_CLASSES} a readable "
            "image can show; leave --confusion out (the JSON still holds the matrix)"
        )
    result = evaluate_zero_shot(
        model,
        tokenize,
        dataset,
        classnames,
        templates,
        batch_size=args.batch_size,
        workers=args.workers,
        device=device,
        cache_path=args.cache_dir,
        progress=not args.no_progress,
    )
    result = {"data": str(args.data), **result}
    if args.confusion:
        import torch

        save_confusion_matrix_png(
            torch.tensor(result["confusion_matrix"]),
            dataset.classnames,
            args.confusion,
            title=f"zero-shot: {Path(str(args.data)).name}",
        )
        result["confusion_png"] = str(args.confusion)
    return result


def _linear_probe(args, model, preprocess, device: str) -> dict[str, Any]:
    from cliplab.evaluation.linear_probe import run_linear_probe

    result = run_linear_probe(
        model,
        preprocess,
        args.train,
        args.test,
        batch_size=args.batch_size,
        workers=args.workers,
        device=device,
        cache_dir=args.cache_dir,
        val_fraction=args.val_fraction,
        seed=args.seed,
        progress=not args.no_progress,
    )
    return {"protocol": "linear-probe", "train": str(args.train), "test": str(args.test), **result}


def _retrieval(args, model, preprocess, device: str) -> dict[str, Any]:
    from cliplab.evaluation.retrieval import run_retrieval
    from cliplab.tokenizer import tokenize

    result = run_retrieval(
        model,
        preprocess,
        tokenize,
        args.data,
        batch_size=args.batch_size,
        workers=args.workers,
        device=device,
        cache_dir=args.cache_dir,
        chunk_size=args.chunk_size,
        images_root=args.images,
        image_column=args.image_column,
        caption_column=args.caption_column,
        split=args.split,
        progress=not args.no_progress,
    )
    return {"protocol": "retrieval", "data": str(args.data), **result}


# Keys printed as percentages: accuracies and recalls are fractions in [0, 1].
_FRACTION_HINTS = ("top1", "top5", "recall", "accuracy", "acc")


def format_table(result: dict[str, Any]) -> str:
    """Scalar results as an aligned two-column table; per-class recall listed below when short."""
    rows = []
    for key, value in result.items():
        if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
            continue
        if isinstance(value, float) and any(h in key for h in _FRACTION_HINTS) and 0.0 <= value <= 1.0:
            text = f"{100 * value:6.2f} %"
        elif isinstance(value, float):
            text = f"{value:.4g}"
        else:
            text = str(value)
        rows.append((key, text))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    recall = result.get("per_class_recall")
    if isinstance(recall, dict) and len(recall) <= 50:
        lines.append("per-class recall:")
        name_w = max(len(n) for n in recall)
        for name, r in recall.items():
            lines.append(f"  {name:<{name_w}}  " + ("   (no images)" if r is None else f"{100 * r:6.2f} %"))
    skipped = result.get("skipped")
    if skipped:
        lines.append(f"skipped {len(skipped)} unreadable image(s), e.g. {skipped[0]}")
    return "\n".join(lines)
