"""Zero-shot accuracy on the built-in synthetic tasks, run periodically during training.

The images go through the same eval preprocessing as ``cliplab eval zeroshot`` and the prompts are
the tasks' own templates, so a task written to disk with ``cliplab data tasks`` and evaluated from
the image folder gives the accuracy logged here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import torch

from ..tokenizer import tokenize
from ..zeroshot import build_zero_shot_classifier


class SyntheticZeroShot:
    def __init__(self, preprocess: Callable, image_size: int, per_class: int = 20, seed: int = 0):
        from ..data.synthetic import zero_shot_tasks

        self.tasks = []
        for task in zero_shot_tasks(image_size=image_size, per_class=per_class, seed=seed):
            images = torch.stack([preprocess(im) for im in task.images])
            self.tasks.append((task, images, torch.tensor(task.labels)))

    @property
    def chance(self) -> dict[str, float]:
        return {task.name: 1.0 / len(task.classnames) for task, _, _ in self.tasks}

    @torch.no_grad()
    def __call__(
        self, model: torch.nn.Module, device: torch.device, batch_size: int = 256
    ) -> dict[str, float]:
        was_training = model.training
        model.eval()
        results = {}
        try:
            tok = functools.partial(tokenize)
            for task, images, labels in self.tasks:
                classifier = build_zero_shot_classifier(
                    model, tok, task.classnames, task.templates, device=device, progress=False
                )
                feats = torch.cat(
                    [
                        model.encode_image(images[i : i + batch_size].to(device), normalize=True)
                        for i in range(0, len(images), batch_size)
                    ]
                )
                pred = (feats.float() @ classifier).argmax(dim=1).cpu()
                results[task.name] = float((pred == labels).float().mean())
        finally:
            model.train(was_training)
        return results


class DatasetZeroShot:
    """Zero-shot top-1 on the user's own evaluation sets (``eval_data``), read once at start-up.

    Each entry is what ``cliplab eval zeroshot --data`` takes; its class names and templates are
    settled the same way (``classnames.txt``/``templates.txt`` beside the images, else the ImageNet
    templates), so the numbers logged here are the ones that command prints for the same model.
    """

    def __init__(self, specs: list[str], preprocess: Callable, image_size: int = 64):
        from ..evaluation.zeroshot import resolve_prompts

        self.sets = []
        for spec in specs:
            # built-in sets (synthetic:, transfer:) are rendered at the model's input size
            dataset, classnames, templates = resolve_prompts(
                spec, preprocess, synthetic_image_size=image_size
            )
            builtin = spec.startswith(("synthetic:", "transfer:"))
            name = spec.split(":", 1)[1] if builtin else Path(spec).name or spec
            self.sets.append((name, dataset, classnames, templates))

    @property
    def chance(self) -> dict[str, float]:
        return {name: 1.0 / len(classnames) for name, _, classnames, _ in self.sets}

    def __call__(
        self, model: torch.nn.Module, device: torch.device, batch_size: int = 256
    ) -> dict[str, float]:
        from ..evaluation.zeroshot import evaluate_zero_shot

        was_training = model.training
        model.eval()
        try:
            return {
                name: evaluate_zero_shot(
                    model, tokenize, dataset, classnames, templates, batch_size=batch_size, workers=0,
                    device=device, progress=False,
                )["top1"]
                for name, dataset, classnames, templates in self.sets
            }  # fmt: skip
        finally:
            model.train(was_training)
