"""Evaluation protocols: zero-shot classification, linear probe, retrieval, benchmark suites.

Each protocol is a plain function over a model and a dataset returning a JSON-ready dict; the
``cliplab eval`` commands only parse arguments and print. Image features go through
:func:`extract_image_features`, which caches them on disk so protocols share one pass per split.
"""

from .datasets import (
    ClassificationDataset,
    DatasetError,
    ImageFolderDataset,
    InMemoryDataset,
    ManifestDataset,
    WebDatasetShards,
    load_classification_dataset,
)
from .features import ImageFeatures, SkippedImage, extract_image_features
from .metrics import classification_metrics, confusion_matrix, save_confusion_matrix_png, topk_accuracy
from .zeroshot import evaluate_zero_shot

__all__ = [
    "ClassificationDataset",
    "DatasetError",
    "ImageFeatures",
    "ImageFolderDataset",
    "InMemoryDataset",
    "ManifestDataset",
    "SkippedImage",
    "WebDatasetShards",
    "classification_metrics",
    "confusion_matrix",
    "evaluate_zero_shot",
    "extract_image_features",
    "load_classification_dataset",
    "save_confusion_matrix_png",
    "topk_accuracy",
]
