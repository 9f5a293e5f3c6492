"""The zero-shot classification protocol: build a text classifier, embed the images, score.

``evaluate_zero_shot`` returns plain JSON-ready numbers; the CLI prints and saves them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError
from ..zeroshot.classifier import build_zero_shot_classifier, model_device, zero_shot_logits
from ..zeroshot.prompts import Template
from .features import extract_image_features
from .metrics import CONFUSION_PNG_MAX_CLASSES, classification_metrics, confusion_matrix, predict


def evaluate_zero_shot(
    model: torch.nn.Module,
    tokenize: Callable[..., torch.Tensor],
    dataset: Any,
    classnames: Sequence[str] | Mapping[str, Sequence[str]] | None,
    templates: Sequence[Template],
    *,
    batch_size: int = 256,
    workers: int | None = None,
    device: str | torch.device | None = None,
    cache_path: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict:
    """Zero-shot accuracy of ``model`` on ``dataset`` (a map-style dataset of (image tensor, label)).

    ``classnames`` (label order; or a mapping name -> prompts) defaults to ``dataset.classnames``;
    ``templates`` are filled with each name (see ``build_zero_shot_classifier``). Unreadable images
    are skipped and reported. Returns the metrics of ``classification_metrics`` (``top1``,
    ``top5``, ``mean_per_class_recall``, ``per_class_recall``...) plus ``n_images`` (images scored),
    ``n_skipped``, ``skipped`` (their files), ``n_templates`` and, for up to 50 classes,
    ``confusion_matrix`` (rows true class, columns predicted; counts). ``device`` defaults to the
    model's.
    """
    if classnames is None:
        classnames = getattr(dataset, "classnames", None)
        if classnames is None:
            raise UsageError("no class names: pass classnames, or a dataset with a classnames attribute")
    names = list(classnames)
    n_data_classes = len(getattr(dataset, "classnames", names))
    if len(names) != n_data_classes:
        raise UsageError(f"{len(names)} class names given but the dataset has {n_data_classes} classes")
    device = model_device(model, device)
    features, labels, skipped = extract_image_features(
        model,
        dataset,
        batch_size=batch_size,
        workers=workers,
        device=device,
        cache_path=cache_path,
        progress=progress,
    )
    classifier = build_zero_shot_classifier(
        model, tokenize, classnames, templates, batch_size=batch_size, device=device, progress=progress
    )
    logits = zero_shot_logits(features.to(classifier.device), classifier).cpu()
    result = {"protocol": "zeroshot", **classification_metrics(logits, labels, names)}
    result.update(
        n_images=int(labels.shape[0]),
        n_skipped=len(skipped),
        skipped=[s.source for s in skipped],
        n_templates=len(templates),
    )
    if len(names) <= CONFUSION_PNG_MAX_CLASSES:
        result["confusion_matrix"] = confusion_matrix(labels, predict(logits), len(names)).tolist()
    return result


def default_templates(dataset: Any) -> list[str]:
    """The dataset's own templates if it has them, else the paper's 80 ImageNet templates.

    Own templates: a synthetic task's, or ``templates.txt`` in an image folder's root (as written
    by ``cliplab.data.writers.write_image_folder``).
    """
    from ..zeroshot.prompts import imagenet_templates, load_templates

    own = getattr(dataset, "templates", None)
    if own:
        return list(own)
    root = getattr(dataset, "root", None)
    if root is not None and (Path(root) / "templates.txt").is_file():
        return load_templates(Path(root) / "templates.txt")
    return imagenet_templates()


def resolve_prompts(
    data: str | os.PathLike,
    preprocess: Callable,
    classnames: Any = None,
    templates: Any = None,
    **dataset_options: Any,
) -> tuple[Any, list[str] | dict[str, list[str]], list[str]]:
    """Open ``data`` and settle its class names and templates from user options.

    ``classnames``: None (the dataset's), a list, or a file / shipped set name; a list of names
    names the dataset's classes in label order, a per-class prompt mapping (JSON object) is used
    for the classifier only. ``templates``: None (:func:`default_templates`; none with a per-class
    prompt mapping), a list, or a file / shipped set name. ``dataset_options`` go to
    ``load_classification_dataset``. Returns ``(dataset, classnames, templates)``.
    """
    from ..zeroshot.prompts import load_classnames, load_templates
    from .datasets import load_classification_dataset

    names = load_classnames(classnames) if isinstance(classnames, (str, os.PathLike)) else classnames
    mapping = names if isinstance(names, Mapping) else None
    dataset = load_classification_dataset(
        data, preprocess, classnames=None if mapping is not None else names, **dataset_options
    )
    if templates is None:
        templates = default_templates(dataset) if mapping is None else []
    elif isinstance(templates, (str, os.PathLike)):
        templates = load_templates(templates)
    return dataset, (mapping if mapping is not None else list(dataset.classnames)), list(templates)


def evaluate_zero_shot_from_suite(model: torch.nn.Module, preprocess: Callable, task: Any, ctx: Any) -> dict:
    """Run a benchmark suite's ``zeroshot`` task (options ``classnames``, ``templates``)."""
    from ..tokenizer import tokenize

    dataset, classnames, templates = resolve_prompts(
        task.data, preprocess, task.options.get("classnames"), task.options.get("templates")
    )
    return evaluate_zero_shot(
        model,
        tokenize,
        dataset,
        classnames,
        templates,
        batch_size=ctx.batch_size,
        workers=ctx.workers,
        device=ctx.device,
        cache_path=ctx.cache_dir,
        progress=False,
    )
