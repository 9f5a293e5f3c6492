"""Embed an image collection into a folder: numbered ``.npy`` parts plus a Parquet metadata table.

Layout of an embedding folder (``cliplab embed --out DIR``)::

    embed.json               what was embedded and how: model identity (weights fingerprint, config,
                             preprocessing, where it was loaded from), data, dtype, part size, counts
    part-00000.npy           [n, D] L2-normalised embeddings (float16 or float32) of part 0's readable images
    part-00000.parquet       one row per embedding: id, source, caption, width, height, file, offset, size
    part-00000.skipped.json  part 0's unreadable images: [[id, source, reason], ...]
    ...
    skipped.json             every unreadable image, written when the job completes

Part ``p`` holds the collection's images ``[p * part_size, (p + 1) * part_size)``; ``id`` is an image's
position in the collection (stable however many images are skipped). ``file``/``offset``/``size``
locate the encoded image (a file, or a member's bytes inside a shard) so a server can show it.

Resume. Every file is written atomically and a part's Parquet file last, so a part whose Parquet
file exists is finished. Run the same command again after an interruption: the folder's
``embed.json`` is compared with the new job (model weights, preprocessing, the data's file list,
sizes and times, dtype, part size) and, if they agree, finished parts are kept and skipped. Batches
never cross a part boundary, so a resumed job writes the same bytes as an uninterrupted one.
Anything else in a non-empty folder needs ``--overwrite``, which removes only these files.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import OutputExistsError, UsageError
from ..fileio import TMP_SUFFIX, atomic_write, atomic_write_json, is_orphan, read_text
from ..inference import ImageCollection, image_batches, model_fingerprint

FORMAT = "cliplab-embeddings-v1"
DTYPES = ("float16", "float32")
METADATA_COLUMNS = ("id", "source", "caption", "width", "height", "file", "offset", "size")
_OWN_FILE = re.compile(r"^(embed\.json|skipped\.json|part-\d{5}\.(npy|parquet|skipped\.json))$")


def part_name(part: int, suffix: str) -> str:
    return f"part-{part:05d}.{suffix}"


def model_identity(model: torch.nn.Module, preprocess: Any, spec: str | os.PathLike) -> dict[str, Any]:
    """What identifies the embedding space: weights fingerprint, config, preprocessing, and its origin."""
    path = Path(spec).expanduser()
    cfg = getattr(preprocess, "cfg", None)
    return {
        "fingerprint": model_fingerprint(model),
        "config": model.config.to_dict(),
        "preprocess": cfg.to_dict() if cfg is not None else repr(preprocess),
        "spec": os.fspath(spec),
        "path": str(path.resolve()) if path.exists() else None,
    }


@dataclass(frozen=True)
class EmbedJob:
    """A validated embedding job: nothing has been written when one exists."""

    out: Path
    images: ImageCollection
    data_spec: str
    dtype: str
    part_size: int
    info: dict[str, Any]  # the embed.json this job writes
    resume: bool  # the folder holds earlier parts of this very job

    @property
    def n_parts(self) -> int:
        return max(1, -(-len(self.images) // self.part_size))


def _identity(info: dict[str, Any]) -> dict[str, Any]:
    """The parts of embed.json a resumed job must share (not where the model was read from, nor counts)."""
    model = {k: info["model"].get(k) for k in ("fingerprint", "config", "preprocess")}
    return {"format": info.get("format"), "model": model, "data": info.get("data"),
            "dtype": info.get("dtype"), "part_size": info.get("part_size")}  # fmt: skip


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = _identity(old), _identity(new)
    names = {"format": "format", "dtype": "dtype", "part_size": "part size"}
    out = [names[k] for k in names if a[k] != b[k]]
    if a["model"]["fingerprint"] != b["model"]["fingerprint"]:
        out.append("model weights")
    elif a["model"] != b["model"]:
        out.append("model config or preprocessing")
    old_data, new_data = a["data"] or {}, b["data"] or {}
    if old_data.get("spec") != new_data.get("spec"):
        out.append(f"data ({old_data.get('spec')} then, {new_data.get('spec')} now)")
    elif old_data != new_data:
        out.append(
            f"data files ({old_data.get('count')} images then, {new_data.get('count')} now, or changed files)"
        )
    return out


def read_info(folder: str | os.PathLike) -> dict[str, Any] | None:
    """A folder's embed.json, or None when it has none; an unreadable one is an error naming it."""
    path = Path(folder) / "embed.json"
    if not path.is_file():
        return None
    try:
        info = json.loads(read_text(path, "embedding description"))
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{path}:{exc.lineno}: invalid JSON ({exc.msg}); re-run cliplab embed with --overwrite"
        ) from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise UsageError(f"{path} is not a cliplab embedding description ({FORMAT}); choose another folder")
    return info


def plan_embedding(
    out: str | os.PathLike,
    images: ImageCollection,
    data_spec: str,
    identity: dict[str, Any],
    *,
    dtype: str = "float16",
    part_size: int = 50_000,
    overwrite: bool = False,
) -> EmbedJob:
    """Check every setting and the output folder; decide between a fresh job and a resume. Writes nothing."""
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r} is not one of {list(DTYPES)}")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise UsageError(
            "cliplab embed writes its metadata with pyarrow: pip install 'cliplab[search]'"
        ) from None
    if part_size < 1:
        raise UsageError(f"--part-size must be >= 1, got {part_size}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a directory; choose another --out")
    data = {"spec": data_spec, "kind": images.kind, "count": len(images), "fingerprint": images.fingerprint()}
    info = {"format": FORMAT, "model": identity, "embed_dim": identity["config"]["embed_dim"],
            "dtype": dtype, "part_size": part_size, "data": data}  # fmt: skip
    old = read_info(out) if out.is_dir() else None
    resume = False
    if old is not None and not overwrite:
        changed = _differences(old, info)
        if changed:
            raise OutputExistsError(
                f"{out} holds embeddings of another job (changed: {', '.join(changed)}); pass --overwrite to "
                "replace them or choose another --out"
            )
        resume = True
    elif old is None and out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{out} is not empty and holds no cliplab embeddings; choose another --out or pass --overwrite "
            "(which removes only cliplab's own embedding files)"
        )
    return EmbedJob(out, images, data_spec, dtype, part_size, info, resume)


def _remove_own_files(folder: Path, orphans_only: bool = False) -> None:
    """Delete this module's files in ``folder`` (or only the temporaries of its interrupted writes)."""
    for item in folder.iterdir():
        if not item.is_file():
            continue
        if is_orphan(item):  # ".part-00003.npy.k2j3h4.tmp", left by a write that was killed
            if _OWN_FILE.match(item.name[1 : -len(TMP_SUFFIX)].rsplit(".", 1)[0]):
                item.unlink()
        elif not orphans_only and _OWN_FILE.match(item.name):
            item.unlink()


def _part_done(out: Path, part: int) -> bool:
    npy, parquet = out / part_name(part, "npy"), out / part_name(part, "parquet")
    if not (npy.is_file() and parquet.is_file() and (out / part_name(part, "skipped.json")).is_file()):
        return False
    try:
        import pyarrow.parquet as pq

        return np.load(npy, mmap_mode="r", allow_pickle=False).shape[0] == pq.read_metadata(parquet).num_rows
    except Exception:  # a damaged part is embedded again
        return False


def _write_part(
    job: EmbedJob, part: int, features: list[np.ndarray], rows: dict[str, list], skipped: list
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = job.info["embed_dim"]
    array = np.concatenate([np.empty((0, dim), np.float32), *features]).astype(job.dtype)
    atomic_write(job.out / part_name(part, "npy"), lambda tmp: _save_npy(tmp, array))
    atomic_write_json(job.out / part_name(part, "skipped.json"), [list(s) for s in skipped], indent=None)
    schema = pa.schema([("id", pa.int64()), ("source", pa.string()), ("caption", pa.string()),
                        ("width", pa.int32()), ("height", pa.int32()), ("file", pa.string()),
                        ("offset", pa.int64()), ("size", pa.int64())])  # fmt: skip
    table = pa.Table.from_pydict({c: rows[c] for c in METADATA_COLUMNS}, schema=schema)
    atomic_write(job.out / part_name(part, "parquet"), lambda tmp: pq.write_table(table, str(tmp)))


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to a temporary name
        np.save(f, array, allow_pickle=False)


def _part_range(job: EmbedJob, part: int) -> range:
    return range(part * job.part_size, min((part + 1) * job.part_size, len(job.images)))


class _Part:
    """What one part collects before it is written."""

    def __init__(self) -> None:
        self.features: list[np.ndarray] = []
        self.rows: dict[str, list] = {c: [] for c in METADATA_COLUMNS}
        self.skipped: list = []

    def add(self, batch, images: ImageCollection) -> None:
        self.features.append(batch.features.numpy())
        self.skipped += batch.skipped
        for i, (width, height) in zip(batch.indices, batch.sizes, strict=True):
            file, offset, size = images.location(i)
            values = (i, images.source(i), images.caption(i), width, height, file, offset, size)
            for column, value in zip(METADATA_COLUMNS, values, strict=True):
                self.rows[column].append(value)


def _embed_parts(
    job: EmbedJob, parts: list[int], model, preprocess, bar: tqdm, batch_size: int, **loader
) -> None:
    # One DataLoader (its workers start once) over batches that never cross a part boundary, so
    # a part's numbers do not depend on which parts were embedded before it.
    batches = [
        list(r[i : i + batch_size])
        for p in parts
        for r in [_part_range(job, p)]
        for i in range(0, len(r), batch_size)
    ]
    current, collected = None, _Part()
    for batch_indices, batch in zip(
        batches,
        image_batches(model, job.images, preprocess=preprocess, batches=batches, bar=bar, **loader),
        strict=True,
    ):
        part = batch_indices[0] // job.part_size
        if current is not None and part != current:
            _write_part(job, current, collected.features, collected.rows, collected.skipped)
            collected = _Part()
        current = part
        collected.add(batch, job.images)
    if current is not None:
        _write_part(job, current, collected.features, collected.rows, collected.skipped)


def run_embedding(
    job: EmbedJob,
    model: torch.nn.Module,
    preprocess,
    *,
    batch_size: int = 256,
    workers: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Embed every unfinished part of ``job``; returns counts and throughput (images/s of this run)."""
    out = job.out
    out.mkdir(parents=True, exist_ok=True)
    _remove_own_files(out, orphans_only=job.resume)
    atomic_write_json(out / "embed.json", {**job.info, "complete": False})
    todo = [p for p in range(job.n_parts) if not (job.resume and _part_done(out, p))]
    total = len(job.images)
    remaining = sum(len(_part_range(job, p)) for p in todo)
    started = time.perf_counter()
    with tqdm(total=total, initial=total - remaining, desc="embed", unit="img", disable=not progress,
              dynamic_ncols=True) as bar:  # fmt: skip
        _embed_parts(job, todo, model, preprocess, bar, batch_size, workers=workers, device=device)
    seconds = time.perf_counter() - started
    return _finish(job, remaining, seconds, resumed_parts=job.n_parts - len(todo))


def _finish(job: EmbedJob, embedded_now: int, seconds: float, resumed_parts: int) -> dict[str, Any]:
    import pyarrow.parquet as pq

    skipped, n = [], 0
    for part in range(job.n_parts):
        skipped += json.loads((job.out / part_name(part, "skipped.json")).read_text())
        n += pq.read_metadata(job.out / part_name(part, "parquet")).num_rows
    atomic_write_json(job.out / "skipped.json", skipped)
    counts = {"n_embedded": n, "n_skipped": len(skipped), "parts": job.n_parts}
    atomic_write_json(job.out / "embed.json", {**job.info, **counts, "complete": True})
    return {**counts, "skipped": skipped, "images_this_run": embedded_now, "seconds": seconds,
            "images_per_s": embedded_now / seconds if seconds > 0 else float("nan"),
            "parts_kept": resumed_parts}  # fmt: skip
