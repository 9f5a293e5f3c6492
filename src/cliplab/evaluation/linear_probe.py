"""Linear-probe evaluation as in the CLIP paper (section 3.2, appendix A.3).

A multinomial logistic regression with L2 penalty (scikit-learn, L-BFGS) is fitted on frozen image
features. Its inverse regularisation strength C is chosen on a validation split held out from the
training split, then the classifier is refitted on the whole training split and scored on the test
split. The paper sweeps lambda over 1e-6 .. 1e6 with a parametric binary search: a coarse grid of one
point every two decades, then repeatedly halving the step around the best value until it reaches 8
steps per decade. :func:`c_search` does the same over C.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import UsageError
from ..zeroshot.classifier import model_device

# log10(C) of the coarse grid and the finest step of the refinement (8 steps per decade).
COARSE_LOG10_C = (-6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0)
FINEST_STEP = 1.0 / 8.0
MAX_ITER = 1000
PARALLEL_MIN_VALUES = 2_000_000  # see _validation_scores


def split_train_val(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (train, validation) index arrays, stratified by label where every class allows it.

    Deterministic given ``seed``. Each class keeps at least one training example when stratifying.
    """
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = len(labels)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < 2:  # a class with one example cannot be on both sides: plain random split
        order = rng.permutation(n)
        n_val = min(max(1, round(val_fraction * n)), n - 1)
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    val_parts = []
    for c in classes:
        members = rng.permutation(np.flatnonzero(labels == c))
        n_val = min(max(1, round(val_fraction * len(members))), len(members) - 1)
        val_parts.append(members[:n_val])
    val = np.sort(np.concatenate(val_parts))
    train = np.setdiff1d(np.arange(n), val, assume_unique=True)
    return train, val


def _fit(features: np.ndarray, labels: np.ndarray, c: float):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    # Multinomial is the default for L-BFGS with more than two classes in scikit-learn >= 1.5.
    clf = LogisticRegression(C=c, solver="lbfgs", max_iter=MAX_ITER)
    with warnings.catch_warnings():
        # Very weak regularisation on separable data never "converges"; the sweep judges the result.
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(features, labels)
    return clf


def _validation_scores(log10_cs: Sequence[float], x, y, fit_idx, val_idx, n_jobs: int | None) -> list[float]:
    """Validation accuracy of a probe fitted on ``fit_idx`` for each C, fitted in parallel.

    scikit-learn's ``validation_curve`` runs the fits in worker processes that import only
    scikit-learn (not torch or cliplab), which keeps their start-up short. Small problems stay in
    this process: below ``PARALLEL_MIN_VALUES`` feature values a fit is quicker than a worker's start.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import validation_curve

    jobs = n_jobs if len(log10_cs) > 1 and x[fit_idx].size >= PARALLEL_MIN_VALUES else 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        _, val_scores = validation_curve(
            LogisticRegression(solver="lbfgs", max_iter=MAX_ITER),
            x,
            y,
            param_name="C",
            param_range=[10.0**p for p in log10_cs],
            cv=[(fit_idx, val_idx)],
            scoring="accuracy",
            n_jobs=jobs,
        )
    return [float(v) for v in val_scores[:, 0]]


def c_search(
    score: Callable[[Sequence[float]], list[float]],
    c_grid: Sequence[float] | None = None,
) -> tuple[float, list[tuple[float, float]]]:
    """Choose C maximising ``score`` (a batch function: list of log10 C -> list of validation scores).

    With ``c_grid`` None: the paper's search, the coarse grid ``COARSE_LOG10_C`` then halving the step
    around the best value down to ``FINEST_STEP``, never leaving the coarse grid's range. With a grid:
    exactly those values. Among equal scores the middle one (by C) wins, so the result is
    deterministic. Returns (best C, the sweep as (C, score) pairs sorted by C).
    """
    seen: dict[float, float] = {}
    lo, hi = COARSE_LOG10_C[0], COARSE_LOG10_C[-1]

    def evaluate(points: Sequence[float]) -> None:
        new = sorted({round(p, 6) for p in points if c_grid is not None or lo <= p <= hi} - seen.keys())
        if new:
            seen.update(zip(new, score(new), strict=True))

    def best() -> float:
        # Middle of the tied best values (lower median): on a plateau of equal validation accuracy
        # this stays away from its edges, where the fit is barely regularised or barely fits.
        top = max(seen.values())
        tied = [p for p in sorted(seen) if seen[p] == top]
        return tied[(len(tied) - 1) // 2]

    if c_grid is not None:
        if not len(c_grid) or min(c_grid) <= 0:
            raise UsageError(f"c_grid must hold positive values, got {list(c_grid)}")
        evaluate([math.log10(c) for c in c_grid])
    else:
        evaluate(COARSE_LOG10_C)
        step = COARSE_LOG10_C[1] - COARSE_LOG10_C[0]
        while step > FINEST_STEP:
            step /= 2
            b = best()
            evaluate([b - step, b + step])

    def as_c(p: float) -> float:
        return 10.0**p if c_grid is None else _grid_value(c_grid, p)

    return as_c(best()), [(as_c(p), seen[p]) for p in sorted(seen)]


def _grid_value(c_grid: Sequence[float], log10_c: float) -> float:
    # Return the caller's own float rather than 10**round(log10(c)), so "C in c_grid" holds exactly.
    return min(c_grid, key=lambda c: abs(math.log10(c) - log10_c))


def _as_numpy(x: torch.Tensor | np.ndarray, dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def linear_probe(
    train_features: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    test_features: torch.Tensor | np.ndarray,
    test_labels: torch.Tensor | np.ndarray,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    c_grid: Sequence[float] | None = None,
    n_jobs: int | None = -1,
) -> dict[str, Any]:
    """Fit a logistic-regression probe on frozen features and score it on the test split.

    C is chosen by :func:`c_search` on a validation split (``val_fraction`` of the training split,
    from :func:`split_train_val` with ``seed``), then the probe is refitted on the whole training
    split. The C values of one search round are fitted in parallel over ``n_jobs`` processes (-1: all
    cores) when the problem is large enough to gain from it. Returns ``top1`` and ``mean_per_class_recall`` on the test split, the chosen ``C``, its
    ``val_top1``, the ``sweep`` as [C, val_top1] pairs, and the split sizes.
    """
    from sklearn.metrics import balanced_accuracy_score

    x_train, y_train = _as_numpy(train_features, np.float32), _as_numpy(train_labels, np.int64)
    x_test, y_test = _as_numpy(test_features, np.float32), _as_numpy(test_labels, np.int64)
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise UsageError(
            f"features and labels differ in length: train {len(x_train)} vs {len(y_train)}, "
            f"test {len(x_test)} vs {len(y_test)}"
        )
    if len(np.unique(y_train)) < 2:
        raise UsageError("the training split has fewer than two classes; a linear probe needs at least two")
    fit_idx, val_idx = split_train_val(y_train, val_fraction, seed)

    def score(points: Sequence[float]) -> list[float]:
        return _validation_scores(points, x_train, y_train, fit_idx, val_idx, n_jobs)

    c, sweep = c_search(score, c_grid)
    predictions = _fit(x_train, y_train, c).predict(x_test)
    return {
        "top1": float((predictions == y_test).mean()),
        "mean_per_class_recall": float(balanced_accuracy_score(y_test, predictions)),
        "C": c,
        "val_top1": max(s for _, s in sweep),
        "sweep": [[sc, sv] for sc, sv in sweep],
        "n_train": int(len(y_train)),
        "n_val": int(len(val_idx)),
        "n_test": int(len(y_test)),
        "n_classes": int(len(np.unique(y_train))),
    }


def _open(data, preprocess, what: str):
    if isinstance(data, (str, os.PathLike)):
        from .datasets import load_classification_dataset

        return load_classification_dataset(data, preprocess)
    if not hasattr(data, "__getitem__"):
        raise TypeError(f"{what} must be a dataset or a path, got {type(data).__name__}")
    return data


def run_linear_probe(
    model,
    preprocess,
    train_data,
    test_data,
    *,
    batch_size: int = 64,
    workers: int | None = None,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    c_grid: Sequence[float] | None = None,
    n_jobs: int | None = -1,
    progress: bool = True,
) -> dict[str, Any]:
    """Linear probe of ``model``'s image features: train on ``train_data``, score on ``test_data``.

    Each split is a labelled dataset of ``(image tensor, label)`` or a path opened with
    :func:`cliplab.evaluation.datasets.load_classification_dataset` (an image folder, manifest or
    shards) and ``preprocess``. The two splits must share their class names. With ``cache_dir``,
    features go through the shared cache of :func:`~cliplab.evaluation.features.extract_image_features`
    (keyed by model weights, samples and transform), so a zero-shot run on the same split reuses them. Returns
    :func:`linear_probe`'s result plus the numbers of unreadable images skipped in each split.
    ``device`` defaults to the model's.
    """
    from .features import extract_image_features

    device = model_device(model, device)

    train, test = _open(train_data, preprocess, "train_data"), _open(test_data, preprocess, "test_data")
    train_names, test_names = getattr(train, "classnames", None), getattr(test, "classnames", None)
    if train_names is not None and test_names is not None and list(train_names) != list(test_names):
        raise UsageError(
            f"the train and test splits name their classes differently ({len(train_names)} vs {len(test_names)} "
            "classes, or another order); labels would not match: give both splits the same class-name file"
        )
    extracted = []
    for dataset in (train, test):
        extracted.append(
            extract_image_features(
                model,
                dataset,
                batch_size=batch_size,
                workers=workers,
                device=device,
                cache_path=cache_dir if hasattr(dataset, "fingerprint") else None,
                progress=progress,
            )
        )
    (x_train, y_train, skipped_train), (x_test, y_test, skipped_test) = extracted
    result = linear_probe(
        x_train, y_train, x_test, y_test, val_fraction=val_fraction, seed=seed, c_grid=c_grid, n_jobs=n_jobs
    )
    result.update(n_skipped_train=len(skipped_train), n_skipped_test=len(skipped_test))
    return result
