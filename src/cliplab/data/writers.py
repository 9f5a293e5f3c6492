"""Write generated samples to disk: image files + manifest, webdataset tar shards, image folders.

All three layouts encode each image with `encode_image`, so the bytes (and, PNG being lossless, the
decoded pixels) of a sample are the same whichever layout it was written to. Tar members get fixed
metadata (mtime 0, uid/gid 0, mode 0644), so writing the same samples twice gives identical shards.
"""

from __future__ import annotations

import csv
import io
import json
import re
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

MANIFEST_FORMATS = ("csv", "tsv", "jsonl")
_PIL_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}


def encode_image(image: Image.Image, image_format: str = "png") -> bytes:
    """Encode an image as `image_format` ("png", "jpg" or "webp") bytes."""
    fmt = _PIL_FORMATS.get(image_format.lower())
    if fmt is None:
        raise ValueError(f"unsupported image_format {image_format!r}; choose one of {sorted(_PIL_FORMATS)}")
    buf = io.BytesIO()
    extra: dict[str, Any] = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    image.convert("RGB").save(buf, format=fmt, **extra)
    return buf.getvalue()


def _progress(samples: Iterable, desc: str, enabled: bool = True) -> tqdm:
    total = len(samples) if hasattr(samples, "__len__") else None
    return tqdm(samples, total=total, desc=desc, unit="img", dynamic_ncols=True, disable=not enabled)


def write_files(
    samples: Iterable, out_dir: str | Path, fmt: str = "csv", image_format: str = "png", progress: bool = True
) -> Path:
    """Write `out_dir/images/000000.png ...` and `out_dir/manifest.{csv|tsv|jsonl}`; return the manifest.

    The manifest has columns "filepath" (relative to the manifest's folder) and "caption".
    """
    if fmt not in MANIFEST_FORMATS:
        raise ValueError(f"unknown manifest format {fmt!r}; choose one of {MANIFEST_FORMATS}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    manifest = out / f"manifest.{fmt}"
    ext = image_format.lower()
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        row_writer = None if fmt == "jsonl" else csv.writer(f, delimiter="," if fmt == "csv" else "\t")
        if row_writer:
            row_writer.writerow(["filepath", "caption"])
        for i, sample in enumerate(_progress(samples, f"writing {out}", progress)):
            rel = f"images/{i:06d}.{ext}"
            (out / rel).write_bytes(encode_image(sample.image, image_format))
            if row_writer:
                row_writer.writerow([rel, sample.caption])
            else:
                f.write(json.dumps({"filepath": rel, "caption": sample.caption}, ensure_ascii=False) + "\n")
    return manifest


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_webdataset(
    samples: Iterable,
    out_dir: str | Path,
    shard_size: int = 1000,
    image_format: str = "png",
    progress: bool = True,
) -> list[Path]:
    """Write webdataset shards `out_dir/shard-000000.tar ...` and `out_dir/sizes.json`.

    Sample `i` becomes members `{i:06d}.png` (image), `{i:06d}.txt` (caption) and `{i:06d}.json`
    (attributes). Returns the shard paths in order.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ext = image_format.lower()
    shards: list[Path] = []
    sizes: dict[str, int] = {}
    tar = None
    try:
        for i, sample in enumerate(_progress(samples, f"writing {out}", progress)):
            if i % shard_size == 0:
                if tar is not None:
                    tar.close()
                shards.append(out / f"shard-{len(shards):06d}.tar")
                sizes[shards[-1].name] = 0
                tar = tarfile.open(shards[-1], "w", format=tarfile.USTAR_FORMAT)
            key = f"{i:06d}"
            _add_member(tar, f"{key}.{ext}", encode_image(sample.image, image_format))
            _add_member(tar, f"{key}.txt", sample.caption.encode("utf-8"))
            _add_member(tar, f"{key}.json", json.dumps(sample.attributes, sort_keys=True).encode("utf-8"))
            sizes[shards[-1].name] += 1
    finally:
        if tar is not None:
            tar.close()
    (out / "sizes.json").write_text(json.dumps(sizes, indent=1) + "\n", encoding="utf-8")
    return shards


def folder_name(classname: str) -> str:
    """File-system-safe folder name for a class ("red triangle" -> "red_triangle")."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", classname).strip("_.") or "class"


def write_image_folder(
    task: Any, out_dir: str | Path, image_format: str = "png", progress: bool = True, prompts: bool = True
) -> Path:
    """Write a zero-shot task as `out_dir/<class folder>/<i>.png`; return `out_dir`.

    With `prompts`, also writes `classnames.txt` (real class names, one per line, in label order),
    `folders.txt` (the folder of each class, same order) and `templates.txt` (one prompt template per
    line). Without, the folder is what a user would have: class folders named after their classes,
    scored with the default templates.
    """
    out = Path(out_dir)
    folders: list[str] = []
    for name in task.classnames:
        folder = folder_name(name)
        while folder in folders:  # two names that sanitise alike stay apart
            folder += "_"
        folders.append(folder)
    for folder in folders:
        (out / folder).mkdir(parents=True, exist_ok=True)
    ext = image_format.lower()
    pairs = list(zip(task.images, task.labels, strict=True))
    for i, (image, label) in enumerate(_progress(pairs, f"writing {task.name}", progress)):
        (out / folders[label] / f"{i:05d}.{ext}").write_bytes(encode_image(image, image_format))
    if not prompts:
        if folders != list(task.classnames):
            raise ValueError(f"{task.name}: class names {task.classnames} are not usable as folder names")
        return out
    (out / "classnames.txt").write_text("\n".join(task.classnames) + "\n", encoding="utf-8")
    (out / "folders.txt").write_text("\n".join(folders) + "\n", encoding="utf-8")
    (out / "templates.txt").write_text("\n".join(task.templates) + "\n", encoding="utf-8")
    return out
