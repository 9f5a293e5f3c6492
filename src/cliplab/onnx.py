"""Embed images and texts with an exported model (``cliplab export onnx``), without torch.

Needs numpy, Pillow, onnxruntime and cliplab itself (its tokenizer and preprocessing run without
torch); ``pip install onnxruntime`` or ``pip install 'cliplab[export]'``::

    from cliplab.onnx import Encoder

    encoder = Encoder("exported/")                       # image_encoder.onnx, text_encoder.onnx, cliplab_onnx.json
    image_features = encoder.encode_images(["dog.jpg", pil_image])     # (2, embed_dim), L2-normalised
    text_features = encoder.encode_texts(["a dog", "a cat"])
    probs = softmax(encoder.logits(image_features, text_features))    # cliplab.onnx.softmax

Preprocessing is the model's own eval transform (the same Pillow steps as ``cliplab.load``'s
``preprocess``, normalised in numpy with identical float32 arithmetic). Texts are tokenised at the
model's context length and cut after the longest row's end-of-text token before the graph runs,
which is exact (the text graph is causal) and saves the work on padding.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import CliplabError
from .tokenizer import EOT_TOKEN, get_tokenizer
from .transforms import PreprocessConfig, convert_rgb, eval_resize, load_image, to_array_normalized

META_FILE = "cliplab_onnx.json"
FORMAT = "cliplab-onnx"
VERSION = 1


class OnnxModelError(CliplabError, ValueError):
    """The directory is not a cliplab ONNX export, or onnxruntime is missing; the message says which."""


class Encoder:
    """Image and text encoders of an ONNX export, run with ONNX Runtime on numpy arrays."""

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise OnnxModelError(
                "cliplab.onnx.Encoder needs onnxruntime; pip install onnxruntime (or 'cliplab[export]')"
            ) from None
        self.directory = Path(directory)
        meta = _read_meta(self.directory)
        self.meta = meta
        self.preprocess_config = PreprocessConfig.from_dict(meta["preprocess"])
        self.context_length = int(meta["model"]["text"]["context_length"])
        self.embed_dim = int(meta["model"]["embed_dim"])
        self.logit_scale = float(meta["logit_scale"])
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        providers = list(providers or ["CPUExecutionProvider"])
        self._image = ort.InferenceSession(
            str(self.directory / meta["image_graph"]), options, providers=providers
        )
        self._text = ort.InferenceSession(
            str(self.directory / meta["text_graph"]), options, providers=providers
        )

    # -- images ---------------------------------------------------------------------------------

    def preprocess(self, image: Image.Image | str | os.PathLike | bytes) -> np.ndarray:
        """One image (PIL, a path or encoded bytes) -> float32 (3, S, S), as the model expects it."""
        if not isinstance(image, Image.Image):
            image = load_image(image)
        cfg = self.preprocess_config
        return to_array_normalized(convert_rgb(eval_resize(image, cfg)), cfg.mean, cfg.std)

    def encode_images(
        self,
        images: Sequence[Image.Image | str | os.PathLike | bytes] | np.ndarray,
        *,
        normalize: bool = True,
        batch_size: int = 32,
    ) -> np.ndarray:
        """(N, embed_dim) features of images, or of an already preprocessed float32 (N, 3, S, S) array."""
        if isinstance(images, np.ndarray):
            pixels = images.astype(np.float32, copy=False)
            if pixels.ndim != 4:
                raise ValueError(f"expected preprocessed images of shape (N, 3, S, S), got {pixels.shape}")
            out = [self._run_images(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)]
        else:
            images = list(images)
            out = [
                self._run_images(np.stack([self.preprocess(im) for im in images[i : i + batch_size]]))
                for i in range(0, len(images), batch_size)
            ]
        features = np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)
        return _l2_normalize(features) if normalize else features

    def _run_images(self, pixels: np.ndarray) -> np.ndarray:
        return self._image.run(None, {"pixel_values": np.ascontiguousarray(pixels)})[0]

    # -- texts ----------------------------------------------------------------------------------

    def tokenize(self, texts: str | Sequence[str], truncate: bool = False) -> np.ndarray:
        """int64 (N, L) ids at the model's context length, cut after the longest row's end token."""
        ids = get_tokenizer().to_numpy(texts, context_length=self.context_length, truncate=truncate)
        if ids.shape[0] == 0:
            return ids
        eot = (ids == EOT_TOKEN).argmax(axis=1)
        return ids[:, : int(eot.max()) + 1]

    def encode_texts(
        self,
        texts: str | Sequence[str],
        *,
        normalize: bool = True,
        truncate: bool = False,
        batch_size: int = 256,
    ) -> np.ndarray:
        """(N, embed_dim) features of texts; a text over the context length raises unless ``truncate``."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = []
        for i in range(0, len(texts), batch_size):
            ids = self.tokenize(texts[i : i + batch_size], truncate=truncate)
            out.append(self._text.run(None, {"input_ids": ids})[0])
        features = np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)
        return _l2_normalize(features) if normalize else features

    # -- both -----------------------------------------------------------------------------------

    def logits(self, image_features: np.ndarray, text_features: np.ndarray) -> np.ndarray:
        """``logit_scale * cosine similarity``, (N_images, N_texts), as ``CLIP.forward``'s first output."""
        return self.logit_scale * _l2_normalize(image_features) @ _l2_normalize(text_features).T


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Row-wise softmax (zero-shot probabilities from :meth:`Encoder.logits`)."""
    z = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _read_meta(directory: Path) -> dict:
    file = directory / META_FILE
    if not file.is_file():
        raise OnnxModelError(
            f"{directory}: no {META_FILE}; expected a directory written by `cliplab export onnx MODEL {directory}`"
        )
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OnnxModelError(f"{file}: not readable JSON ({exc}); export the model again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise OnnxModelError(f'{file}: not a cliplab ONNX export (no "format": "{FORMAT}")')
    if not isinstance(meta.get("version"), int) or meta["version"] > VERSION:
        raise OnnxModelError(f"{file}: export version {meta.get('version')!r}; this cliplab reads {VERSION}")
    for key in ("model", "preprocess", "logit_scale", "image_graph", "text_graph"):
        if key not in meta:
            raise OnnxModelError(f"{file}: missing {key!r}; export the model again")
    for key in ("image_graph", "text_graph"):
        name = meta[key]
        if not isinstance(name, str) or Path(name).name != name or not (directory / name).is_file():
            raise OnnxModelError(f"{file}: {key} {name!r} is not a file in {directory}")
    return meta
