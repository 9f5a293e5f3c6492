"""Zero-shot classifier construction: class names + prompt templates -> a linear head.

The paper's recipe (section 3.1.4 and OpenAI's prompt-engineering notebook): for each class, fill
every template with the class name, encode each prompt with the text tower, L2-normalise each
embedding, average them, and L2-normalise the average. The resulting unit vectors, one per class,
are the columns of the classifier; an image's logits are ``logit_scale * normalised_image @ W``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .prompts import Template, format_prompt


def class_prompts(
    classnames: Sequence[str] | Mapping[str, Sequence[str]], templates: Sequence[Template]
) -> list[list[str]]:
    """The prompts of each class, in class order.

    With a sequence of names, class ``i`` gets every template filled with ``classnames[i]``. With a
    mapping ``name -> prompts`` (per-class prompt lists, as in CuPL), class ``i`` gets its listed
    prompts as written, followed by the templates filled with its name; pass ``templates=()`` to use
    the listed prompts alone.
    """
    if isinstance(classnames, str):
        raise TypeError("classnames must be a sequence of names or a mapping name -> prompts, not one string")
    if len(classnames) == 0:
        raise ValueError("no class names: a zero-shot classifier needs at least one class")
    per_class: list[list[str]] = []
    if isinstance(classnames, Mapping):
        for name, listed in classnames.items():
            if isinstance(listed, str):
                raise TypeError(f"class {name!r}: its prompts must be a list of strings, not one string")
            per_class.append(list(listed) + [format_prompt(t, name) for t in templates])
    else:
        per_class = [[format_prompt(t, name) for t in templates] for name in classnames]
    names = list(classnames)
    for name, prompts in zip(names, per_class, strict=True):
        if not prompts:
            raise ValueError(f"class {name!r} has no prompts: give at least one template or listed prompt")
    return per_class


def model_device(model: torch.nn.Module, device: str | torch.device | None = None) -> torch.device:
    """``device`` as a ``torch.device``; ``None`` means the device ``model``'s parameters are on.

    Every evaluation entry point takes ``device=None`` and resolves it here, so a model already on
    a GPU is evaluated there without a flag. A model without parameters falls back to its buffers,
    then to the CPU.
    """
    if device is not None:
        return torch.device(device)
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def build_zero_shot_classifier(
    model: torch.nn.Module,
    tokenize: Callable[..., torch.Tensor],
    classnames: Sequence[str] | Mapping[str, Sequence[str]],
    templates: Sequence[Template],
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Zero-shot classifier weights, a float32 tensor [embed_dim, n_classes] of unit columns.

    ``model`` needs ``encode_text(tokens)``; ``tokenize(texts, context_length=..., truncate=True)``
    turns prompts into token ids (``cliplab.tokenize``). Prompts longer than the model's context are
    truncated. ``classnames`` and ``templates`` are described in :func:`class_prompts`; templates are
    strings with ``{}`` / ``{c}`` or callables. Prompts of all classes are encoded together in
    batches of ``batch_size`` (a batch may span several classes), so a 1,000-class, 80-template set
    costs 80,000 / batch_size forward passes; a tqdm bar shows progress when there is more than one
    batch. ``device`` defaults to the model's. The model's train/eval mode is restored afterwards.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    per_class = class_prompts(classnames, templates)
    prompts = [p for ps in per_class for p in ps]
    owner = torch.tensor([c for c, ps in enumerate(per_class) for _ in ps])
    device = model_device(model, device)
    context_length = _context_length(model)
    n_batches = -(-len(prompts) // batch_size)

    sums: torch.Tensor | None = None
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            starts = range(0, len(prompts), batch_size)
            bar = tqdm(
                starts,
                total=n_batches,
                desc="zero-shot classifier",
                unit="batch",
                disable=not progress or n_batches < 2,
            )
            for start in bar:
                tokens = tokenize(
                    prompts[start : start + batch_size], context_length=context_length, truncate=True
                )
                emb = model.encode_text(tokens.to(device))
                emb = F.normalize(emb.float(), dim=-1)
                if sums is None:
                    sums = torch.zeros(len(per_class), emb.shape[1], device=emb.device)
                # Accumulate per class rather than keep every prompt's embedding: 80k x D floats otherwise.
                sums.index_add_(0, owner[start : start + batch_size].to(emb.device), emb)
    finally:
        model.train(was_training)
    counts = torch.tensor([len(ps) for ps in per_class], device=sums.device, dtype=sums.dtype)
    return F.normalize(sums / counts[:, None], dim=-1).T.contiguous()


def _context_length(model: torch.nn.Module) -> int:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "text"):
        return int(config.text.context_length)
    return int(getattr(model, "context_length", 77))


def zero_shot_logits(
    image_features: torch.Tensor, classifier: torch.Tensor, logit_scale: float | torch.Tensor = 100.0
) -> torch.Tensor:
    """Logits [N, n_classes] = ``logit_scale`` * cosine(image, class); features are normalised here.

    Pass ``model.logit_scale.exp()`` as ``logit_scale`` for the model's own temperature (100 for
    OpenAI's models); the ranking, and so every accuracy, does not depend on it.
    """
    feats = F.normalize(image_features.float(), dim=-1)
    return float(logit_scale) * feats @ classifier.to(feats.device, torch.float32)
