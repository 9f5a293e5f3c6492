"""Data sources for training and evaluation: manifests, webdataset shards and the built-in synthetic set.

Training code needs ``DataConfig`` and ``build_train_loader``; see ``cliplab.data.loader`` for how
batches, skipped samples (and the substitutes that keep batches full) and exact resume work, and
``cliplab.data.wds`` for how shards are split over ranks and DataLoader workers.
``cliplab.data.manifest`` is the one reader of CSV/TSV/JSONL manifests, for training and evaluation
alike. ``cliplab.data.wds`` (WebDataset) uses the ``webdataset`` package only when shards are
streamed or a brace pattern is expanded, so ``webdataset`` stays an optional dependency.
"""

from .loader import build_train_loader
from .manifest import ManifestError, read_manifest
from .samples import Batch, DataConfig, SkipRecord, TrainLoader

__all__ = [
    "Batch",
    "DataConfig",
    "ManifestError",
    "SkipRecord",
    "TrainLoader",
    "build_train_loader",
    "read_manifest",
]
