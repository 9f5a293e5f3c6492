"""Linear probe: validation split, the C search, and recovery of linearly separable labels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from cliplab.evaluation.linear_probe import (
    COARSE_LOG10_C,
    _fit,
    c_search,
    linear_probe,
    run_linear_probe,
    split_train_val,
)


def test_split_is_disjoint_stratified_and_deterministic():
    labels = np.repeat(np.arange(4), [10, 20, 5, 2])
    train, val = split_train_val(labels, 0.2, seed=3)
    assert len(np.intersect1d(train, val)) == 0
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(labels)))
    for c in range(4):  # every class on both sides, about 20% held out
        assert (labels[val] == c).any() and (labels[train] == c).any()
    assert (labels[val] == 1).sum() == 4
    again = split_train_val(labels, 0.2, seed=3)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    assert not np.array_equal(val, split_train_val(labels, 0.2, seed=4)[1])


def test_split_with_singleton_class_falls_back_to_random():
    labels = np.array([0, 0, 0, 1, 1, 2, 0, 1, 0, 1])
    train, val = split_train_val(labels, 0.3, seed=0)
    assert len(val) == 3 and len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == 10


def test_c_search_refines_around_the_peak_like_a_binary_search():
    calls = []

    def score(points):
        calls.append(list(points))
        return [-((p - 1.3) ** 2) for p in points]

    c, sweep = c_search(score)
    # Coarse grid picks 10^2; halving steps 1, 0.5, 0.25, 0.125 move to 1, 1.5, 1.25 and stay there.
    assert c == pytest.approx(10**1.25)
    assert calls[0] == list(COARSE_LOG10_C)
    assert [len(x) for x in calls] == [7, 2, 2, 2, 2]
    assert len(sweep) == 15 and [s[0] for s in sweep] == sorted(s[0] for s in sweep)


def test_c_search_ties_pick_the_middle_and_grid_is_exact():
    c, sweep = c_search(lambda pts: [1.0 for _ in pts], c_grid=[0.5, 3.0, 0.01, 20.0])
    assert c == 0.5 and [s[0] for s in sweep] == [0.01, 0.5, 3.0, 20.0]
    c, sweep = c_search(lambda pts: [float(p >= -1) for p in pts])  # plateau from 10^-1 up to 10^6
    assert c == pytest.approx(100.0) and all(1e-6 <= s[0] <= 1e6 for s in sweep)
    c, _ = c_search(lambda pts: [-abs(p) for p in pts], c_grid=[0.316, 1.0, 7.0])
    assert c == 1.0


def _planted(n: int, d: int, k: int, seed: int):
    # Random features with labels from a random linear map, keeping only points with a clear margin.
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((d, k))
    x = rng.standard_normal((4 * n, d)).astype(np.float32)
    scores = x @ w
    top2 = np.sort(scores, axis=1)[:, -2:]
    keep = (top2[:, 1] - top2[:, 0]) > 1.0
    return x[keep][:n], scores[keep][:n].argmax(1)


def test_recovers_planted_linear_labelling_and_picks_c_on_validation():
    x, y = _planted(300, 16, 3, seed=0)
    grid = [1e-4, 1.0, 100.0]
    result = linear_probe(x[:200], y[:200], x[200:], y[200:], seed=1, c_grid=grid, n_jobs=1)
    assert result["top1"] >= 0.97 and result["mean_per_class_recall"] >= 0.97
    assert result["C"] in grid
    assert result["C"] > 1e-4  # so strong a penalty cannot fit; the validation split must say so
    assert result["n_train"] == 200 and result["n_val"] == 40 and result["n_test"] == 100
    # The reported validation score is the chosen C's score on the held-out part of the training split.
    fit, val = split_train_val(y[:200], 0.2, seed=1)
    clf = _fit(x[:200][fit], y[:200][fit], result["C"])
    assert result["val_top1"] == pytest.approx(float((clf.predict(x[:200][val]) == y[:200][val]).mean()))
    assert dict(map(tuple, result["sweep"]))[result["C"]] == result["val_top1"]


def test_default_search_runs_the_paper_sweep():
    x, y = _planted(90, 8, 2, seed=1)
    result = linear_probe(x[:60], y[:60], x[60:], y[60:], n_jobs=1)
    assert len(result["sweep"]) == 15
    assert result["C"] in [c for c, _ in result["sweep"]]
    assert -6 <= math.log10(result["C"]) <= 6
    assert result["top1"] >= 0.9


def test_rejects_single_class():
    x = np.zeros((10, 3), np.float32)
    with pytest.raises(ValueError, match="two classes"):
        linear_probe(x, np.zeros(10), x, np.zeros(10))


def _colour_images(n_per_class: int, seed: int) -> tuple[list[Image.Image], list[int]]:
    rng = np.random.default_rng(seed)
    colours = [(220, 40, 40), (40, 200, 60), (40, 70, 230)]
    images, labels = [], []
    for label, rgb in enumerate(colours):
        for _ in range(n_per_class):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
            images.append(Image.fromarray(pixels))
            labels.append(label)
    return images, labels


def test_run_linear_probe_on_micro_model_features(tmp_path):
    from cliplab.evaluation.datasets import InMemoryDataset
    from cliplab.models import build_model, get_config
    from cliplab.transforms import image_transform

    torch.manual_seed(0)
    model = build_model(get_config("micro")).eval()
    preprocess = image_transform(model.config.vision.image_size)
    names = ["red", "green", "blue"]
    train = InMemoryDataset(*_colour_images(12, seed=0), names, preprocess, name="train")
    test = InMemoryDataset(*_colour_images(6, seed=1), names, preprocess, name="test")
    kwargs = dict(
        batch_size=16, workers=0, cache_dir=tmp_path, c_grid=[0.1, 10.0, 1000.0], n_jobs=1, progress=False
    )
    result = run_linear_probe(model, preprocess, train, test, **kwargs)
    assert result["top1"] >= 0.95
    assert result["n_skipped_train"] == 0 and result["n_test"] == 18
    assert len(list(tmp_path.glob("images-*"))) == 2  # one cached feature file per split
    assert run_linear_probe(model, preprocess, train, test, **kwargs)["top1"] == result["top1"]
    other = InMemoryDataset(*_colour_images(6, seed=1), ["r", "g", "b"], preprocess, name="test")
    with pytest.raises(ValueError, match="name their classes differently"):
        run_linear_probe(model, preprocess, train, other, **kwargs)


def test_run_linear_probe_defaults_to_the_model_device():
    from test_zeroshot import ModelElsewhere  # parameters on 'meta'; records where its inputs went

    from cliplab.evaluation.datasets import InMemoryDataset
    from cliplab.transforms import image_transform

    model, names = ModelElsewhere(), ["red", "green", "blue"]
    train = InMemoryDataset(*_colour_images(4, seed=0), names, image_transform(32), name="train")
    test = InMemoryDataset(*_colour_images(2, seed=1), names, image_transform(32), name="test")
    result = run_linear_probe(
        model, None, train, test, batch_size=8, workers=0, c_grid=[1.0], n_jobs=1, progress=False
    )
    assert result["n_test"] == 6
    assert len(model.seen) == 3 and set(model.seen) == {("image", torch.device("meta"))}
