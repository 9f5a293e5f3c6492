"""Label-free image collections: a list of paths, a folder tree, a manifest or WebDataset shards.

An *image collection* is what the inference layer (:mod:`cliplab.inference.encode`) reads. Any object
works that has

* ``len(collection)``,
* ``collection.source(i)``: a readable name of image ``i`` (its path, or ``shard.tar:key``),
* ``collection.load(i)``: the image as a PIL image (preprocessed by the encoder) or as a ready model
  input tensor; it raises :class:`cliplab.transforms.ImageLoadError` when the image is unreadable,

and optionally ``caption(i)`` (``None`` when there is none) and ``location(i)`` (the file and byte
range holding the encoded image, for reading it back later). The classes here are picklable, so
DataLoader workers can load images in parallel, and every image is decoded by
:func:`cliplab.transforms.load_image` with its decompression-bomb guard.

:func:`open_images` chooses the class from a path the way ``cliplab embed --data`` does.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from ..data.manifest import (
    CAPTION_COLUMNS,
    IMAGE_COLUMNS,
    MANIFEST_SUFFIXES,
    Column,
    ManifestError,
    read_table,
)
from ..data.wds import resolve_shards
from ..errors import UsageError
from ..fileio import read_text
from ..transforms import load_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
PATH_LIST_SUFFIXES = (".txt", ".lst")


class ImageCollection(torch.utils.data.Dataset):
    """Base class: ``load``, ``source`` and ``location`` per image; ``caption`` is ``None`` by default."""

    kind = "images"

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> Image.Image:
        raise NotImplementedError

    def source(self, index: int) -> str:
        raise NotImplementedError

    def caption(self, index: int) -> str | None:
        return None

    def location(self, index: int) -> tuple[str, int, int]:
        """``(file, offset, size)`` of the encoded image; ``size`` -1 means the whole file."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> Image.Image:
        return self.load(index)

    def _keys(self) -> list[str]:
        return [self.source(i) for i in range(len(self))]

    def fingerprint(self) -> str:
        """Hex digest of the images' names, captions and file sizes and times (changes when any do)."""
        h = hashlib.sha256(self.kind.encode())
        for i, key in enumerate(self._keys()):
            h.update(f"{key}\t{self.caption(i)}\n".encode())
        return h.hexdigest()


def _stat_key(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return f"{path}:missing"
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


class ImagePaths(ImageCollection):
    """Image files given by path, with optional captions (one per path, ``None`` for none)."""

    kind = "paths"

    def __init__(self, paths: Sequence[str | os.PathLike], captions: Sequence[str | None] | None = None):
        self.paths = [os.fspath(p) for p in paths]
        if captions is not None and len(captions) != len(self.paths):
            raise ValueError(f"{len(self.paths)} paths but {len(captions)} captions")
        self.captions = list(captions) if captions is not None else None

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> Image.Image:
        return load_image(self.paths[index])

    def source(self, index: int) -> str:
        return self.paths[index]

    def caption(self, index: int) -> str | None:
        return self.captions[index] if self.captions is not None else None

    def location(self, index: int) -> tuple[str, int, int]:
        return self.paths[index], 0, -1

    def _keys(self) -> list[str]:
        return [_stat_key(p) for p in self.paths]


class ImageFolder(ImagePaths):
    """Every image file under ``root`` (any depth, by extension), in sorted path order; hidden entries skipped."""

    kind = "folder"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise UsageError(f"image folder {self.root} does not exist or is not a directory")
        paths = []
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            paths += [
                os.path.join(folder, f)
                for f in sorted(files)
                if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
            ]
        if not paths:
            raise UsageError(
                f"{self.root} holds no image files ({', '.join(IMAGE_EXTENSIONS)}); check the path"
            )
        super().__init__(paths)


class ImageManifest(ImagePaths):
    """The images (and captions, when the file has a caption column) of a CSV/TSV/JSONL manifest.

    Read by ``cliplab.data.manifest.read_table``, as for training: the image column defaults to the
    first of "filepath", "path", "image", the caption column to "caption" or "text" (optional here
    unless named); relative paths are resolved against the manifest's folder. A row without a
    caption (empty, or JSON ``null``) gets ``None``.
    """

    kind = "manifest"

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        image_column: str | None = None,
        caption_column: str | None = None,
    ):
        self.path = Path(path)
        image = Column.named("image", image_column, IMAGE_COLUMNS, "--image-column")
        caption = Column.named("caption", caption_column, CAPTION_COLUMNS, "--caption-column")
        try:
            table = read_table(self.path, [image, caption])
            with_captions = True
        except ManifestError:
            if caption_column is not None:
                raise
            table = read_table(self.path, [image])  # no caption column: images only
            with_captions = False
        paths = [str(table.image_path(row, 0)) for row in table.rows]
        captions = None
        if with_captions:
            captions = [table.text(row, 1, null_ok=True).strip() or None for row in table.rows]
        super().__init__(paths, captions)


class ImagePathList(ImagePaths):
    """A text file with one image path per line (relative to the file's folder); blank lines ignored."""

    kind = "path-list"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        lines = [ln.strip() for ln in read_text(self.path, "image list").splitlines()]
        paths = [str(self.path.resolve().parent / ln) for ln in lines if ln]
        if not paths:
            raise UsageError(f"{self.path} lists no image paths; write one path per line")
        super().__init__(paths)


class ImageShards(ImageCollection):
    """The image members of WebDataset tar shards, with the caption from ``.txt`` or ``.json``.

    Shards are indexed once (member offsets and sizes), so images are read by random access and
    any number of DataLoader workers can share the collection. ``shards`` is anything
    ``cliplab.data.wds.resolve_shards`` expands: a directory of ``*.tar``, a brace pattern, a list.
    """

    kind = "shards"

    def __init__(self, shards: str | os.PathLike | Sequence[str], caption_key: str | None = None):
        self.shards = resolve_shards(shards)
        self.members: list[tuple[int, int, int, str]] = []  # (shard, offset, size, key)
        self.captions: list[str | None] = []
        keys = (caption_key,) if caption_key else CAPTION_COLUMNS
        for s, shard in enumerate(self.shards):
            self._index(s, shard, keys)
        if not self.members:
            raise UsageError(f"the shards {shards} hold no image members ({', '.join(IMAGE_EXTENSIONS)})")

    def _index(self, s: int, shard: str, caption_keys: Sequence[str]) -> None:
        if not os.path.isfile(shard):
            raise UsageError(f"webdataset shard {shard} is not a local file; download the shards first")
        try:
            samples = shard_samples(shard, ("txt", "json"))
        except (tarfile.TarError, OSError) as exc:
            raise UsageError(f"cannot read webdataset shard {shard} ({exc}); re-write or remove it") from None
        for entry in samples.values():
            if "txt" in entry:
                entry["caption"] = _decode(entry["txt"])
            elif "json" in entry:
                entry["caption"] = _json_caption(entry["json"], caption_keys)
        for key, entry in samples.items():
            if "image" in entry:
                self.members.append((s, *entry["image"], key))
                self.captions.append(entry.get("caption"))

    def __len__(self) -> int:
        return len(self.members)

    def load(self, index: int) -> Image.Image:
        return read_shard_member(*self.location(index), name=self.source(index))

    def source(self, index: int) -> str:
        s, _, _, key = self.members[index]
        return f"{self.shards[s]}:{key}"

    def caption(self, index: int) -> str | None:
        return self.captions[index]

    def location(self, index: int) -> tuple[str, int, int]:
        s, offset, size, _ = self.members[index]
        return self.shards[s], offset, size

    def _keys(self) -> list[str]:
        shard_keys = [_stat_key(s) for s in self.shards]
        return [f"{shard_keys[s]}:{key}" for s, _, _, key in self.members]


def shard_samples(shard: str | os.PathLike, read: Sequence[str] = ()) -> dict[str, dict]:
    """The members of a local tar shard grouped by sample key (the name up to its first dot).

    Each sample's dict holds ``"image"``: ``(offset, size)`` of its first image member, and the bytes
    of every member whose (lower-case) extension is in ``read``. Raises tarfile's and the OS's errors.
    """
    samples: dict[str, dict] = {}
    with tarfile.open(shard, "r:") as tar:
        for m in tar:
            if not m.isfile():
                continue
            stem, _, ext = os.path.basename(m.name).partition(".")
            entry = samples.setdefault(os.path.join(os.path.dirname(m.name), stem), {})
            ext = ext.lower()
            if ext in read:
                entry[ext] = tar.extractfile(m).read()
            elif "." + ext in IMAGE_EXTENSIONS and "image" not in entry:
                entry["image"] = (m.offset_data, m.size)
    return samples


def read_shard_member(shard: str | os.PathLike, offset: int, size: int, name: str) -> Image.Image:
    """Decode the image stored at ``offset`` (``size`` bytes) in a tar shard, without tarfile."""
    with open(shard, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    return load_image(data, name=name)


def _decode(data: bytes) -> str | None:
    try:
        return data.decode("utf-8").strip() or None
    except UnicodeDecodeError:
        return None


def _json_caption(data: bytes, keys: Sequence[str]) -> str | None:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(obj, dict):
        value = next((obj[k] for k in keys if isinstance(obj.get(k), str)), None)
        return value.strip() or None if value is not None else None
    return None


def open_images(
    spec: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    image_column: str | None = None,
    caption_column: str | None = None,
) -> ImageCollection:
    """An image collection from a path, chosen by what it is.

    A list of paths; a ``.csv``/``.tsv``/``.jsonl`` manifest; a ``.txt`` list of paths; a ``.tar``
    shard, a shard pattern, or a directory holding ``*.tar`` shards; a single image file; otherwise a
    folder tree of images. Anything missing or empty is a ``UsageError`` naming it.
    """
    if isinstance(spec, (list, tuple)):
        return ImagePaths(spec)
    text = os.fspath(spec)
    suffix = Path(text).suffix.lower()
    if suffix in MANIFEST_SUFFIXES:
        return ImageManifest(text, image_column=image_column, caption_column=caption_column)
    if suffix in PATH_LIST_SUFFIXES:
        return ImagePathList(text)
    if suffix == ".tar" or "{" in text or (os.path.isdir(text) and any(Path(text).glob("*.tar"))):
        return ImageShards(text, caption_key=caption_column)
    if suffix in IMAGE_EXTENSIONS:
        if not os.path.isfile(text):
            raise UsageError(f"image file {text} does not exist; check the path")
        return ImagePaths([text])
    if not os.path.exists(text):
        raise UsageError(f"{text}: no such folder, manifest, image list or shard; check the path")
    return ImageFolder(text)
