"""Classification metrics: top-k accuracy, mean per-class recall, confusion matrix (+ PNG).

Ties. Classes are ranked by descending score, and classes with equal scores are ranked by
ascending class index (a stable sort). The rank of the true class ``y`` of a row is therefore
``#{j : s_j > s_y} + #{j < y : s_j = s_y}``, a prediction is correct at ``k`` when that rank is
below ``k``, and the predicted class is the lowest-indexed class with the highest score. So top-1
accuracy always equals the fraction of correct predictions, and a model whose scores are all equal
predicts class 0 every time (it does not get credit for every tie).

Mean per-class recall averages, over the classes that occur in the labels, the fraction of their
images predicted correctly. Classes with no images in the test set are excluded from the mean
(their recall is undefined) and reported as ``None``.

All accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from ..errors import UsageError

CONFUSION_PNG_MAX_CLASSES = 50


def _check(logits: torch.Tensor, labels: torch.Tensor) -> None:
    if logits.ndim != 2 or labels.ndim != 1 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"expected logits (N, C) and labels (N,); got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    if logits.shape[0] == 0:
        raise ValueError(
            "no samples: metrics over an empty set are undefined (check that the dataset has images)"
        )
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(
            f"labels must lie in [0, {logits.shape[1]}); got range [{int(labels.min())}, {int(labels.max())}]"
        )
    if torch.isnan(logits).any():
        raise ValueError("logits contain NaN; the model produced invalid features")


def true_class_rank(logits: torch.Tensor, labels: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Rank (0 = first) of each row's true class, ties broken by lower class index (module docstring)."""
    _check(logits, labels)
    ranks = []
    index = torch.arange(logits.shape[1], device=logits.device)
    for start in range(0, logits.shape[0], chunk):  # bounds the N x C boolean temporaries
        s, y = logits[start : start + chunk], labels[start : start + chunk].to(logits.device)
        s_y = s.gather(1, y[:, None])
        above = (s > s_y).sum(1)
        tied_before = ((s == s_y) & (index[None, :] < y[:, None])).sum(1)
        ranks.append((above + tied_before).cpu())
    return torch.cat(ranks)


def predict(logits: torch.Tensor) -> torch.Tensor:
    """Predicted class per row: the lowest index among the highest scores (same on every device)."""
    best = logits.max(dim=1, keepdim=True).values
    index = torch.arange(logits.shape[1], device=logits.device).expand_as(logits)
    return torch.where(logits == best, index, logits.shape[1]).min(dim=1).values


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Fraction of rows whose true class ranks in the top ``k`` (ties as in the module docstring)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return float((true_class_rank(logits, labels) < k).float().mean())


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Counts [n_classes, n_classes]: row = true class, column = predicted class."""
    flat = labels.long().cpu() * n_classes + predictions.long().cpu()
    return torch.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def per_class_recall(labels: torch.Tensor, predictions: torch.Tensor, n_classes: int) -> list[float | None]:
    """Recall of each class; ``None`` for classes with no images."""
    cm = confusion_matrix(labels, predictions, n_classes)
    support = cm.sum(1)
    return [float(cm[c, c] / support[c]) if support[c] > 0 else None for c in range(n_classes)]


def classification_metrics(
    logits: torch.Tensor, labels: torch.Tensor, classnames: Sequence[str] | None = None
) -> dict:
    """Top-1, top-5 (only with >= 5 classes), mean per-class recall and per-class recall.

    Returns a JSON-ready dict: ``top1``, ``top5`` (absent with fewer than 5 classes),
    ``mean_per_class_recall``, ``per_class_recall`` (class name -> recall or ``None`` when the class
    has no images), ``n_samples``, ``n_classes`` and ``n_classes_present``.
    """
    _check(logits, labels)
    n_classes = logits.shape[1]
    names = list(classnames) if classnames is not None else [str(i) for i in range(n_classes)]
    if len(names) != n_classes:
        raise ValueError(f"{len(names)} class names for {n_classes} logit columns")
    ranks = true_class_rank(logits, labels)
    recalls = per_class_recall(labels, predict(logits), n_classes)
    present = [r for r in recalls if r is not None]
    out: dict = {"top1": float((ranks < 1).float().mean())}
    if n_classes >= 5:
        out["top5"] = float((ranks < 5).float().mean())
    out["mean_per_class_recall"] = sum(present) / len(present)
    # Duplicate names (ImageNet's curated list has two) must not overwrite each other.
    keys = [n if names.count(n) == 1 else f"{n} [{i}]" for i, n in enumerate(names)]
    out["per_class_recall"] = dict(zip(keys, recalls, strict=True))
    out.update(n_samples=int(labels.shape[0]), n_classes=n_classes, n_classes_present=len(present))
    return out


def save_confusion_matrix_png(
    matrix: torch.Tensor, classnames: Sequence[str], path: str | os.PathLike, title: str | None = None
) -> None:
    """Draw ``matrix`` (rows true, columns predicted) as a PNG, each row normalised to recall.

    Refuses more than 50 classes: the labels would be unreadable; use the JSON counts instead.
    Needs matplotlib (the ``eval`` extra) and raises a :class:`~cliplab.errors.UsageError` without it.
    """
    n = matrix.shape[0]
    if n > CONFUSION_PNG_MAX_CLASSES:
        raise ValueError(
            f"a confusion-matrix image of {n} classes would be unreadable (limit {CONFUSION_PNG_MAX_CLASSES}); "
            "leave out the PNG and use per-class recall"
        )
    try:  # optional (the eval extra): the metrics above never need it
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError(
            f"drawing the confusion matrix {os.fspath(path)} needs matplotlib, which is not installed: "
            "pip install 'cliplab[eval]'"
        ) from None

    counts = matrix.double()
    rows = counts / counts.sum(1, keepdim=True).clamp(min=1)
    side = max(4.0, 0.35 * n + 2.0)
    fig = Figure(figsize=(side + 1.0, side))
    FigureCanvasAgg(fig)  # a Figure without pyplot: no global state, no display needed
    ax = fig.add_subplot()
    im = ax.imshow(rows.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xticks(range(n), [str(c) for c in classnames], rotation=90, fontsize=8)
    ax.set_yticks(range(n), [str(c) for c in classnames], fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 20:  # the counts still fit inside the cells
        for i in range(n):
            for j in range(n):
                if counts[i, j] > 0:
                    colour = "white" if rows[i, j] > 0.5 else "black"
                    ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=7, color=colour)
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=100)
