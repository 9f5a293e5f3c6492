"""Zero-shot accuracy on the built-in synthetic tasks, run periodically during training.

The images go through the same eval preprocessing as ``cliplab eval zeroshot`` and the prompts are
the tasks' own templates, so a task written to disk with ``cliplab data tasks`` and evaluated from
the image folder gives the accuracy logged here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from ..data.synthetic import zero_shot_tasks
from ..tokenizer import tokenize
from ..zeroshot import build_zero_shot_classifier


class SyntheticZeroShot:
    def __init__(self, preprocess: Callable, image_size: int, per_class: int = 20, seed: int = 0):
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
