"""Queries against an index: text, an uploaded image, or an image of the collection; thumbnails.

A :class:`Searcher` holds the model and the index, loaded once, and is shared by every request of
``cliplab serve`` (and used once by ``cliplab search``). Everything it does is safe from several
threads at once: the model is only run under ``torch.inference_mode`` (its mode is never changed),
FAISS searches get their parameters per call, and the caches take a lock.

Client input never names a file: an image of the collection is addressed by its row number, and
its file is looked up in the index's own metadata. Limits (:class:`Limits`) bound k, the query's
length, an upload's bytes and its pixels; a request beyond them, or an upload that is not an
image, raises :class:`QueryError` carrying the HTTP status to answer with.
"""

from __future__ import annotations

import io
import os
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import CliplabError, UsageError
from ..inference import encode_texts, model_fingerprint
from ..transforms import ImageLoadError, load_image
from ..zeroshot.classifier import model_device
from .index import SearchIndex, open_index


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask for."""

    max_k: int = 100
    max_query_chars: int = 1000
    max_upload_bytes: int = 10 * 2**20
    max_image_pixels: int = 40_000_000
    thumbnail_px: int = 256
    text_cache: int = 4096
    thumbnail_cache: int = 4096

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


class QueryError(CliplabError, ValueError):
    """A bad query; ``status`` is the HTTP status a server answers with (4xx)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


class _LRU:
    """A small thread-safe least-recently-used cache."""

    def __init__(self, size: int) -> None:
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key, make: Callable[[], Any]) -> tuple[Any, bool]:
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key], True
        value = make()  # outside the lock: other queries go on meanwhile
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return value, False


def load_recorded_model(recorded: dict[str, Any], override: str | None, device: str | None):
    """The model the collection was embedded with (checked by fingerprint), or ``override``.

    Returns ``(model, preprocess, note)``; ``note`` warns when ``override`` has other weights.
    """
    import cliplab

    from ..device import resolve_device

    device = resolve_device(device)
    if override is None:
        path = recorded.get("path")
        if path is not None and not os.path.exists(path):
            raise UsageError(f"the model recorded at embedding time, {path}, no longer exists; pass --model")
        model, preprocess = cliplab.load(path or recorded["spec"], device=str(device))
        if model_fingerprint(model) != recorded["fingerprint"]:
            raise UsageError(
                f"the weights of {path or recorded['spec']} changed since the collection was embedded; "
                "re-embed it, or pass --model to search with these weights anyway"
            )
        return model, preprocess, ""
    model, preprocess = cliplab.load(override, device=str(device))
    dim = recorded["config"]["embed_dim"]
    if model.config.embed_dim != dim:
        raise UsageError(
            f"--model {override} makes {model.config.embed_dim}-d embeddings, the collection's are {dim}-d"
        )
    note = ""
    if model_fingerprint(model) != recorded["fingerprint"]:
        note = f"--model {override} is not the model the collection was embedded with; results mean little unless it maps to the same space"
    return model, preprocess, note


class Searcher:
    """Model + index + metadata, loaded once; the methods answer one query each."""

    def __init__(
        self, index: SearchIndex, model: torch.nn.Module, preprocess, limits: Limits = Limits()
    ) -> None:
        self.index, self.model, self.preprocess, self.limits = index, model, preprocess, limits
        self.metadata = index.collection.metadata()
        self.device = model_device(model)
        self._texts = _LRU(limits.text_cache)
        self._thumbs = _LRU(limits.thumbnail_cache)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        model: str | None = None,
        device: str | None = None,
        mmap: bool = False,
        limits: Limits = Limits(),
    ) -> tuple[Searcher, str]:
        """Open the index at ``path`` with its recorded model (or ``model``); returns (searcher, note)."""
        index = open_index(path, mmap=mmap)
        loaded, preprocess, note = load_recorded_model(index.collection.model, model, device)
        return cls(index, loaded, preprocess, limits), note

    def __len__(self) -> int:
        return len(self.index)

    # -- checks

    def check_k(self, k: int) -> int:
        if not 1 <= k <= self.limits.max_k:
            raise QueryError(f"k must be between 1 and {self.limits.max_k}, got {k}")
        return k

    def check_row(self, row: int) -> int:
        if not 0 <= row < len(self):
            raise QueryError(f"no image {row} in this index (ids are 0 to {len(self) - 1})", status=404)
        return row

    # -- query vectors

    def text_vector(self, query: str) -> tuple[np.ndarray, bool]:
        """The query's unit vector and whether it came from the cache."""
        query = " ".join(query.split())
        if not query:
            raise QueryError("the text query is empty; type what the images should show")
        if len(query) > self.limits.max_query_chars:
            raise QueryError(
                f"the text query has {len(query)} characters; the limit is {self.limits.max_query_chars}"
            )
        return self._texts.get(query, lambda: encode_texts(self.model, [query], progress=False)[0].numpy())

    def decode_upload(self, data: bytes, name: str = "upload") -> Image.Image:
        """An uploaded image, refused (413, 422) if too large, too many pixels or not an image."""
        if len(data) > self.limits.max_upload_bytes:
            raise QueryError(
                f"{name} has {len(data)} bytes; the limit is {self.limits.max_upload_bytes}", status=413
            )
        if not data:
            raise QueryError(f"{name} is empty; upload an image file")
        try:
            with warnings.catch_warnings():  # a size over Pillow's own warning level is refused below
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as probe:  # reads the header only
                    width, height = probe.size
        except Image.DecompressionBombError:
            raise QueryError(f"{name} has too many pixels (a decompression bomb?)", status=413) from None
        except Exception:
            raise QueryError(
                f"{name} is not an image cliplab can read (JPEG, PNG, WebP, GIF, BMP, TIFF)", status=415
            ) from None
        if width * height > self.limits.max_image_pixels:
            raise QueryError(
                f"{name} is {width}x{height} = {width * height} pixels; the limit is {self.limits.max_image_pixels}",
                status=413,
            )
        try:
            return load_image(data, name=name)
        except ImageLoadError as exc:
            raise QueryError(f"{name} could not be decoded: {str(exc)[:200]}") from None

    def image_vector(self, image: Image.Image) -> np.ndarray:
        x = self.preprocess(image).unsqueeze(0).to(self.device)
        with torch.inference_mode():
            out = self.model.encode_image(x).float()
        return torch.nn.functional.normalize(out, dim=-1)[0].cpu().numpy()

    # -- searches

    def search_vector(self, vector: np.ndarray, k: int) -> list[dict[str, Any]]:
        scores, rows = self.index.search(vector[None, :], self.check_k(k))
        return [self.describe(int(r), float(s)) for s, r in zip(scores[0], rows[0], strict=True) if r >= 0]

    def search_text(self, query: str, k: int) -> dict[str, Any]:
        started = time.perf_counter()
        self.check_k(k)
        vector, cached = self.text_vector(query)
        results = self.search_vector(vector, k)
        return {"query": query, "k": k, "cached": cached, "results": results, "took_ms": _ms(started)}

    def search_image(self, data: bytes, k: int, name: str = "upload") -> dict[str, Any]:
        started = time.perf_counter()
        self.check_k(k)
        results = self.search_vector(self.image_vector(self.decode_upload(data, name)), k)
        return {"query": name, "k": k, "results": results, "took_ms": _ms(started)}

    def search_similar(self, row: int, k: int) -> dict[str, Any]:
        started = time.perf_counter()
        self.check_k(k)
        vector = self.index.collection.vectors(np.array([self.check_row(row)]))[0]
        results = self.search_vector(vector, k)
        return {"query": row, "k": k, "results": results, "took_ms": _ms(started)}

    def describe(self, row: int, score: float | None = None) -> dict[str, Any]:
        meta = self.metadata.slice(row, 1).to_pylist()[0]
        out = {"id": row, "score": score, "caption": meta["caption"], "source": meta["source"],
               "width": meta["width"], "height": meta["height"]}  # fmt: skip
        return out if score is not None else {k: v for k, v in out.items() if k != "score"}

    # -- thumbnails

    def thumbnail(self, row: int) -> bytes:
        """JPEG bytes of image ``row``, at most ``thumbnail_px`` on its long side (cached)."""
        return self._thumbs.get(self.check_row(row), lambda: self._make_thumbnail(row))[0]

    def _make_thumbnail(self, row: int) -> bytes:
        meta = self.metadata.slice(row, 1).to_pylist()[0]
        try:
            with open(meta["file"], "rb") as f:
                f.seek(meta["offset"])
                data = f.read(meta["size"] if meta["size"] >= 0 else -1)
            image = load_image(data, name=meta["source"])
        except (OSError, ImageLoadError):
            raise QueryError(
                f"image {row} ({os.path.basename(meta['source'])}) can no longer be read", status=404
            ) from None
        image.thumbnail((self.limits.thumbnail_px, self.limits.thumbnail_px), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=85)
        return buffer.getvalue()


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
