"""Label-free inference: embed images (paths, folders, manifests, shards) and texts with any CLIP model.

One layer used by evaluation and search alike; see :mod:`cliplab.inference.encode` for the encoders
and :mod:`cliplab.inference.sources` for the image collections::

    model, preprocess = cliplab.load("ViT-B/32")
    images = open_images("photos/")                       # or a manifest, shards, a list of paths
    out = encode_images(model, images, preprocess=preprocess)   # features [N, D], indices, skipped
    texts = encode_texts(model, ["a red car", "a dog"])   # [2, D]
    fast = encode_images(model, images, preprocess=preprocess, precision="auto")  # bfloat16 where native

:mod:`cliplab.inference.fast` prepares an inference-only copy of an image tower (bfloat16 or float16,
BatchNorm folded, channels-last ResNets): ``prepare_image_encoder(model).encode_image(x)``.
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
from .fast import FastImageEncoder, prepare_image_encoder
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
    "FastImageEncoder",
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
    "prepare_image_encoder",
]
