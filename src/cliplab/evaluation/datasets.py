"""Labelled image datasets for evaluation: image folders, manifests, webdataset shards, synthetic tasks.

Every dataset here is a map-style ``torch.utils.data.Dataset`` of ``(image tensor, label)`` with
``classnames`` (label order), ``source(i)`` (a readable name of sample ``i``: its path or
``shard.tar:key``) and ``fingerprint()`` (a hash of the sample list, used as a feature-cache key).

Unreadable images. ``dataset[i]`` returns ``None`` for an image that cannot be decoded, instead of
raising; ``collate_skipping`` drops those, and ``extract_image_features`` reports them, so every metric
says over how many images it was computed. ``dataset.get(i)`` raises ``ImageLoadError`` instead.

Errors that stop loading: no samples at all (an empty dataset would otherwise score 0%), duplicate
class names, and labels without a class name.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..data.manifest import IMAGE_COLUMNS, MANIFEST_SUFFIXES, Column, read_table
from ..data.wds import resolve_shards
from ..errors import CliplabError
from ..fileio import read_text
from ..transforms import ImageLoadError, load_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
Transform = Callable[[Image.Image], torch.Tensor]


class DatasetError(CliplabError, ValueError):
    """A dataset cannot be used as given; the message names the file and what to change."""


def check_classnames(classnames: Sequence[str], where: str) -> list[str]:
    """Return ``classnames`` as a list after checking it is non-empty and has no duplicates."""
    names = [str(n) for n in classnames]
    if not names:
        raise DatasetError(f"{where}: no class names")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not name.strip():
            raise DatasetError(f"{where}: class {i} has an empty name")
        if name in seen:
            raise DatasetError(
                f"{where}: class name {name!r} appears twice (labels {seen[name]} and {i}); class names must be "
                "unique so that predictions can be told apart"
            )
        seen[name] = i
    return names


class ClassificationDataset(torch.utils.data.Dataset):
    """Base class: subclasses set ``classnames`` and ``labels`` and implement ``_image`` and ``source``."""

    classnames: list[str]
    labels: list[int]

    def __init__(self, transform: Transform | None) -> None:
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def _image(self, index: int) -> Image.Image:
        raise NotImplementedError

    def source(self, index: int) -> str:
        raise NotImplementedError

    def get(self, index: int) -> tuple[Any, int]:
        """``(transformed image, label)``; raises ``ImageLoadError`` naming the file if unreadable."""
        image = self._image(index)
        return (self.transform(image) if self.transform is not None else image), self.labels[index]

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        try:
            return self.get(index)
        except ImageLoadError:
            return None

    def _sample_keys(self) -> list[str]:
        """What identifies the samples for the cache key: sources plus, for files, size and mtime."""
        return [self.source(i) for i in range(len(self))]

    def fingerprint(self) -> str:
        """Hex digest of the samples, their labels and the transform (changes when any of them do)."""
        h = hashlib.sha256()
        h.update(type(self).__name__.encode())
        h.update(repr(self.transform).encode())
        h.update(json.dumps(self.classnames).encode())
        for key, label in zip(self._sample_keys(), self.labels, strict=True):
            h.update(f"{key}\t{label}\n".encode())
        return h.hexdigest()

    def _check_nonempty(self, where: str) -> None:
        if len(self) == 0:
            raise DatasetError(f"{where}: the dataset has no images; check the path and the file extensions")
        bad = sorted({y for y in self.labels if not 0 <= y < len(self.classnames)})
        if bad:
            raise DatasetError(
                f"{where}: label(s) {bad[:10]} have no class name ({len(self.classnames)} classes are named); "
                "pass a class-name file that covers every label"
            )


def file_keys(paths: Sequence[str]) -> list[str]:
    """Fingerprint parts for files: path, size and modification time (``missing`` if absent)."""
    keys = []
    for p in paths:
        try:
            st = os.stat(p)
            keys.append(f"{p}:{st.st_size}:{st.st_mtime_ns}")
        except OSError:
            keys.append(f"{p}:missing")
    return keys


class FileDataset(ClassificationDataset):
    """Images read from files (``paths``); subclasses set ``paths``, ``labels`` and ``classnames``."""

    paths: list[str]

    def _image(self, index: int) -> Image.Image:
        return load_image(self.paths[index])

    def source(self, index: int) -> str:
        return self.paths[index]

    def _sample_keys(self) -> list[str]:
        return file_keys(self.paths)


# ---------------------------------------------------------------------------------------------
# Image folder


def _read_name_file(path: Path) -> list[str] | dict[str, str]:
    """A class-name file: text (one name per line) or JSON (a list, or an object folder -> name)."""
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(read_text(path, "class-name file"))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
        if isinstance(data, dict) and isinstance(data.get("classnames"), list):
            data = data["classnames"]
        ok = isinstance(data, list) and all(isinstance(v, str) for v in data)
        ok = ok or (isinstance(data, dict) and all(isinstance(v, str) for v in data.values()))
        if not ok:
            raise DatasetError(
                f"{path}: expected a JSON list of class names or an object folder -> class name"
            )
        return data
    lines = [ln.strip() for ln in read_text(path, "class-name file").splitlines()]
    return [ln for ln in lines if ln]


def _names_from(classnames: Sequence[str] | str | os.PathLike) -> list[str]:
    """Checked class names from a list or a file (text, or a JSON list)."""
    if not isinstance(classnames, (str, os.PathLike)):
        return check_classnames(classnames, "class names")
    names = _read_name_file(Path(classnames))
    if isinstance(names, dict):
        raise DatasetError(f"{classnames}: expected a list of class names in label order, not a JSON object")
    return check_classnames(names, os.fspath(classnames))


def _folder_key(name: str) -> str:
    # The same squashing as cliplab.data.writers.folder_name, case-folded: "Red Circle" ~ "red_circle".
    return re.sub(r"[^a-z0-9_.-]+", "_", name.lower()).strip("_.")


def _assign_folders(
    root: Path, folders: list[str], names: list[str] | dict[str, str], name_file: Path
) -> dict[str, int]:
    """Map each class folder to a label, given the class names read from ``name_file``."""
    if isinstance(names, dict):  # folder -> class name; labels follow the sorted folders
        missing = [f for f in folders if f not in names]
        if missing:
            raise DatasetError(f"{name_file}: no class name for folder(s) {missing[:5]} of {root}")
        return {f: i for i, f in enumerate(sorted(names))}
    order_file = root / "folders.txt"  # written by cliplab.data.writers.write_image_folder
    if order_file.is_file():
        order = [ln.strip() for ln in read_text(order_file, "folder list").splitlines() if ln.strip()]
        if len(order) != len(names):
            raise DatasetError(
                f"{order_file} lists {len(order)} folders but {name_file} {len(names)} class names"
            )
        return {f: i for i, f in enumerate(order)}
    by_key = {_folder_key(n): i for i, n in enumerate(names)}
    if len(by_key) == len(names) and all(_folder_key(f) in by_key for f in folders):
        return {f: by_key[_folder_key(f)] for f in folders}
    if len(folders) == len(names):  # names listed in sorted folder order (as for ImageNet's wnid folders)
        return {f: i for i, f in enumerate(folders)}
    raise DatasetError(
        f"{name_file} has {len(names)} class names but {root} has {len(folders)} class folders and the names do "
        "not match the folder names; list one name per folder (in sorted folder order) or add folders.txt"
    )


class ImageFolderDataset(FileDataset):
    """``root/<class folder>/**/<image>``: one folder per class.

    Class names, in label order, come from (first found): the ``classnames`` argument (a list or a
    file), ``root/classnames.txt`` or ``root/classnames.json``, else the folder names, sorted.
    A names file is matched to folders by ``root/folders.txt`` (same order; written by
    ``cliplab.data.writers.write_image_folder``), by name (folder "red_circle" ~ class "red circle"),
    or else lists one name per folder in sorted folder order. A JSON object maps folder -> name.
    A class folder may be empty: the class still exists and counts as absent from the test set.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Transform | None = None,
        classnames: Sequence[str] | str | os.PathLike | None = None,
    ) -> None:
        super().__init__(transform)
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"image folder {self.root} does not exist or is not a directory")
        folders = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise DatasetError(f"{self.root} has no class sub-folders; expected root/<class>/<image files>")
        label_of, self.classnames = self._classes(folders, classnames)
        self.paths, self.labels = [], []
        for folder in folders:
            if folder not in label_of:
                raise DatasetError(f"folder {self.root / folder} has no class name in the class-name list")
            files = sorted(
                p
                for p in (self.root / folder).rglob("*")
                if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
            )
            self.paths += [str(p) for p in files]
            self.labels += [label_of[folder]] * len(files)
        self._check_nonempty(str(self.root))

    def _classes(self, folders: list[str], classnames) -> tuple[dict[str, int], list[str]]:
        if classnames is not None and not isinstance(classnames, (str, os.PathLike)):
            names = check_classnames(classnames, "classnames argument")
            return _assign_folders(self.root, folders, names, Path("<classnames argument>")), names
        name_file = Path(classnames) if classnames is not None else None
        if name_file is None:
            name_file = next(
                (p for p in (self.root / "classnames.txt", self.root / "classnames.json") if p.is_file()),
                None,
            )
        if name_file is None:
            return {f: i for i, f in enumerate(folders)}, check_classnames(folders, str(self.root))
        if not name_file.is_file():
            raise DatasetError(f"class-name file {name_file} does not exist")
        names = _read_name_file(name_file)
        label_of = _assign_folders(self.root, folders, names, name_file)
        ordered = [names[f] for f in sorted(names)] if isinstance(names, dict) else names
        return label_of, check_classnames(ordered, str(name_file))


# ---------------------------------------------------------------------------------------------
# CSV / JSONL manifest


def _parse_label(value: Any, index_of: dict[str, int] | None, where: str) -> int | str:
    """An int label, or a class name (str) to be looked up once all names are known."""
    if value is None:
        raise DatasetError(f"{where}: empty label")
    if isinstance(value, bool):
        raise DatasetError(f"{where}: label {value!r} is neither a class index nor a class name")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if index_of is not None and text in index_of:
        return index_of[text]
    if re.fullmatch(r"\d+", text):
        return int(text)
    if not text:
        raise DatasetError(f"{where}: empty label")
    if index_of is not None:
        raise DatasetError(f"{where}: label {text!r} is not one of the {len(index_of)} class names")
    return text


class ManifestDataset(FileDataset):
    """A CSV/TSV (header row) or JSON Lines file with an image path and a label per row.

    The file is read by ``cliplab.data.manifest.read_table``, the reader training uses too, so
    encodings, byte-order marks, column defaults and errors are the same. Labels are class
    indices or class names. With ``classnames`` given (a list or a file, in label
    order) a name label is looked up in it; without, name labels define the classes in sorted order,
    and integer labels get names "0", "1"... The path column defaults to the first of "filepath",
    "path", "image" in the file. Relative paths are resolved against ``root``, by default
    the manifest's folder.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        transform: Transform | None = None,
        *,
        classnames: Sequence[str] | str | os.PathLike | None = None,
        path_column: str | None = None,
        label_column: str = "label",
        root: str | os.PathLike | None = None,
    ) -> None:
        super().__init__(transform)
        self.path = Path(path)
        table = read_table(
            self.path,
            [
                Column.named("image", path_column, IMAGE_COLUMNS, "path_column= (--path-column)"),
                Column("label", (label_column,), "label_column= (--label-column)"),
            ],
        )
        base = Path(root) if root is not None else table.root
        names = _names_from(classnames) if classnames is not None else None
        index_of = {n: i for i, n in enumerate(names)} if names is not None else None
        parsed = [
            (str(table.image_path(row, 0, base)), _parse_label(row.values[1], index_of, table.where(row)))
            for row in table.rows
        ]
        if names is None:
            text_labels = sorted({y for _, y in parsed if isinstance(y, str)})
            if text_labels and any(isinstance(y, int) for _, y in parsed):
                raise DatasetError(
                    f"{self.path}: labels mix class indices and class names; use one or the other"
                )
            if text_labels:
                names = text_labels
                index_of = {n: i for i, n in enumerate(names)}
                parsed = [(p, index_of[y]) for p, y in parsed]
            else:
                names = [str(i) for i in range(max((y for _, y in parsed), default=-1) + 1)]
        self.classnames = names
        self.paths = [p for p, _ in parsed]
        self.labels = [int(y) for _, y in parsed]
        self._check_nonempty(str(self.path))


# ---------------------------------------------------------------------------------------------
# WebDataset shards


class WebDatasetShards(ClassificationDataset):
    """WebDataset tar shards where a sample is an image member plus a ``cls`` member (an integer).

    ``shards`` is a directory of ``*.tar``, a brace pattern or a list, expanded by
    ``cliplab.data.wds.resolve_shards`` as for training.

    The shards are indexed once (member offsets), so samples are read by random access and the
    dataset works with any number of DataLoader workers. Samples without a label are an error;
    class names come from ``classnames`` (a list or file) or ``classnames.txt`` beside the shards,
    else "0", "1"...
    """

    def __init__(
        self,
        shards: str | os.PathLike | Sequence[str],
        transform: Transform | None = None,
        *,
        classnames: Sequence[str] | str | os.PathLike | None = None,
        label_key: str = "cls",
    ) -> None:
        super().__init__(transform)
        self.shards = resolve_shards(shards)
        self.members: list[tuple[int, int, int, str]] = []  # (shard, offset, size, key)
        self.labels = []
        for s, shard in enumerate(self.shards):
            self._index(s, shard, label_key)
        if classnames is None:
            beside = Path(self.shards[0]).parent / "classnames.txt"
            classnames = beside if beside.is_file() else None
        if classnames is None:
            self.classnames = [str(i) for i in range(max(self.labels, default=-1) + 1)]
        else:
            self.classnames = _names_from(classnames)
        self._check_nonempty(str(shards))

    def _index(self, s: int, shard: str, label_key: str) -> None:
        if not os.path.isfile(shard):  # resolve_shards lets URLs through; samples are read by offset here
            raise DatasetError(f"webdataset shard {shard} is not a local file; download the shards first")
        from ..inference.sources import shard_samples

        samples = shard_samples(shard, (label_key,))
        for entry in samples.values():
            if label_key in entry:
                entry["label"] = entry[label_key].decode("utf-8").strip()
        for key, entry in samples.items():
            if "image" not in entry:
                continue
            if "label" not in entry or not re.fullmatch(r"-?\d+", entry["label"]):
                raise DatasetError(f"{shard}: sample {key!r} has no integer {label_key!r} member")
            self.members.append((s, *entry["image"], key))
            self.labels.append(int(entry["label"]))

    def _image(self, index: int) -> Image.Image:
        from ..inference.sources import read_shard_member

        s, offset, size, _ = self.members[index]
        return read_shard_member(self.shards[s], offset, size, name=self.source(index))

    def source(self, index: int) -> str:
        s, _, _, key = self.members[index]
        return f"{self.shards[s]}:{key}"

    def _sample_keys(self) -> list[str]:
        shard_keys = file_keys(self.shards)
        return [f"{shard_keys[s]}:{key}" for s, _, _, key in self.members]


# ---------------------------------------------------------------------------------------------
# In-memory (synthetic tasks)


class InMemoryDataset(ClassificationDataset):
    """PIL images held in memory, e.g. a ``cliplab.data.synthetic.ZeroShotTask``."""

    def __init__(
        self,
        images: Sequence[Image.Image],
        labels: Sequence[int],
        classnames: Sequence[str],
        transform: Transform | None = None,
        name: str = "memory",
    ) -> None:
        super().__init__(transform)
        if len(images) != len(labels):
            raise DatasetError(f"{name}: {len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.name = list(images), [int(y) for y in labels], name
        self.classnames = check_classnames(classnames, name)
        self.templates: list[str] | None = None  # a synthetic task's own prompt templates
        self._check_nonempty(name)

    @classmethod
    def from_task(cls, task: Any, transform: Transform | None = None) -> InMemoryDataset:
        """Wrap a ``ZeroShotTask`` (name, classnames, templates, images, labels)."""
        from ..data.transfer import TRANSFER_SETS

        scheme = "transfer" if task.name in TRANSFER_SETS else "synthetic"
        dataset = cls(task.images, task.labels, task.classnames, transform, name=f"{scheme}:{task.name}")
        dataset.templates = list(task.templates)
        return dataset

    def _image(self, index: int) -> Image.Image:
        return self.images[index]

    def source(self, index: int) -> str:
        return f"{self.name}[{index}]"

    def _sample_keys(self) -> list[str]:
        return [
            hashlib.sha256(img.tobytes()).hexdigest()[:16] + f"{img.size}{img.mode}" for img in self.images
        ]


# ---------------------------------------------------------------------------------------------


def load_classification_dataset(
    spec: str | os.PathLike,
    transform: Transform | None = None,
    *,
    classnames: Sequence[str] | str | os.PathLike | None = None,
    path_column: str | None = None,
    label_column: str = "label",
    synthetic_image_size: int = 64,
) -> ClassificationDataset:
    """Open a dataset, choosing the reader from ``spec``.

    ``synthetic:<task>`` (``colour``, ``shape``, ``count``...: cliplab's built-in tasks),
    ``transfer:<set>`` (``printed-digits``, ``handwritten-digits``: see cliplab.data.transfer); a ``.csv``,
    ``.tsv`` or ``.jsonl`` manifest; a ``.tar`` shard, a shard pattern, or a directory of ``*.tar``
    shards; otherwise a directory of class folders.
    """
    text = os.fspath(spec)
    if text.startswith("synthetic:"):
        from ..data.synthetic import zero_shot_tasks

        (task,) = zero_shot_tasks(image_size=synthetic_image_size, names=[text.split(":", 1)[1]])
        return InMemoryDataset.from_task(task, transform)
    if text.startswith("transfer:"):
        from ..data.transfer import transfer_set

        return InMemoryDataset.from_task(transfer_set(text.split(":", 1)[1]), transform)
    suffix = Path(text).suffix.lower()
    if suffix in MANIFEST_SUFFIXES:
        return ManifestDataset(
            text, transform, classnames=classnames, path_column=path_column, label_column=label_column
        )
    if suffix == ".tar" or "{" in text or (os.path.isdir(text) and glob.glob(os.path.join(text, "*.tar"))):
        return WebDatasetShards(text, transform, classnames=classnames)
    return ImageFolderDataset(text, transform, classnames=classnames)
