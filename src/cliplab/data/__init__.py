"""Data sources for training and evaluation: manifests, webdataset shards and the built-in synthetic set.

Training code needs ``DataConfig`` and ``build_train_loader``; see ``cliplab.data.loader`` for how
batches, skipped samples and exact resume work. ``cliplab.data.wds`` (WebDataset) is imported only
when a WebDataset source is used, so ``webdataset`` stays an optional dependency.
"""

from .loader import Batch, DataConfig, SkipRecord, TrainLoader, build_train_loader
from .manifest import ManifestError, read_manifest

__all__ = [
    "Batch",
    "DataConfig",
    "ManifestError",
    "SkipRecord",
    "TrainLoader",
    "build_train_loader",
    "read_manifest",
]
