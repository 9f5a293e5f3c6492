"""Label-free inference: embed images (paths, folders, manifests, shards) and texts with any CLIP model.

One layer used by evaluation and search alike; see :mod:`cliplab.inference.encode` for the encoders
and :mod:`cliplab.inference.sources` for the image collections::

    model, preprocess = cliplab.load("ViT-B/32")
    images = open_images("photos/")                       # or a manifest, shards, a list of paths
    out = encode_images(model, images, preprocess=preprocess)   # features [N, D], indices, skipped
    texts = encode_texts(model, ["a red car", "a dog"])   # [2, D]
"""

from .encode import (
    EncodedImages,
    ImageBatch,
    SkippedImage,
    TrainingModeError,
    check_inference_mode,
    default_workers,
    encode_images,
    encode_texts,
    image_batches,
    model_fingerprint,
)
from .sources import (
    ImageCollection,
    ImageFolder,
    ImageManifest,
    ImagePathList,
    ImagePaths,
    ImageShards,
    open_images,
)

__all__ = [
    "EncodedImages",
    "ImageBatch",
    "ImageCollection",
    "ImageFolder",
    "ImageManifest",
    "ImagePathList",
    "ImagePaths",
    "ImageShards",
    "SkippedImage",
    "TrainingModeError",
    "check_inference_mode",
    "default_workers",
    "encode_images",
    "encode_texts",
    "image_batches",
    "model_fingerprint",
    "open_images",
]
