"""Image-caption manifests: CSV, TSV or JSON Lines files naming an image file and its caption.

The format comes from the file's extension (``.csv``; ``.tsv``/``.tab``; ``.jsonl``/``.ndjson``/
``.json``). CSV and TSV files start with a header row naming the columns; JSON Lines files hold one
object per line. Relative image paths are resolved against the manifest's own directory, so a
dataset folder can be moved as a whole.

``read_manifest`` checks every line before training starts and raises ``ManifestError`` naming the
file and line of the first malformed one. An empty caption is not malformed: the loader skips such
samples at run time and counts them, like missing or corrupt image files.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path

from ..errors import CliplabError

CSV_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


class ManifestError(CliplabError, ValueError):
    """A manifest file is malformed; the message names the file, the line and what to fix."""


def manifest_format(path: str | os.PathLike) -> str:
    """``"csv"``, ``"tsv"`` or ``"jsonl"``, from the file extension."""
    suffix = Path(path).suffix.lower()
    if suffix in CSV_SUFFIXES:
        return "csv" if CSV_SUFFIXES[suffix] == "," else "tsv"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    raise ManifestError(
        f"{path}: unknown manifest extension {suffix!r}; name the file *.csv, *.tsv or *.jsonl "
        "(CSV/TSV need a header row, JSON Lines one object per line)"
    )


def read_manifest(
    path: str | os.PathLike, image_key: str = "filepath", caption_key: str = "caption"
) -> list[tuple[str, str]]:
    """Read and validate a manifest; return ``(absolute image path, caption)`` pairs in file order.

    Raises ``ManifestError`` with ``file:line`` for a wrong column count, a missing column or key,
    invalid JSON, a non-string value or an empty image path, and ``FileNotFoundError`` if the
    manifest itself does not exist. Image files are not opened here; a missing image is skipped
    (and counted) by the loader, not treated as a malformed manifest. A ``null`` JSON caption is
    read as an empty caption.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist; check DataConfig.path")
    fmt = manifest_format(path)
    rows = (
        _jsonl_rows(path, image_key, caption_key)
        if fmt == "jsonl"
        else _csv_rows(path, fmt, image_key, caption_key)
    )
    root = path.resolve().parent
    entries = []
    for line, image, caption in rows:
        if not image.strip():
            raise ManifestError(f"{path}:{line}: empty image path in column {image_key!r}")
        entries.append((str(root / image), caption))  # an absolute `image` replaces root
    if not entries:
        raise ManifestError(f"{path}: the manifest has no samples (only a header or blank lines)")
    return entries


def _csv_rows(path: Path, fmt: str, image_key: str, caption_key: str) -> Iterator[tuple[int, str, str]]:
    delimiter = "," if fmt == "csv" else "\t"
    # utf-8-sig drops the byte-order mark spreadsheet programs put in front of the header.
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = _read_header(reader, path)
        columns = []
        for key, field in ((image_key, "image_key"), (caption_key, "caption_key")):
            if key not in header:
                raise ManifestError(
                    f"{path}:{reader.line_num}: no column {key!r} in the header {header}; "
                    f"set DataConfig.{field} to the column that holds it"
                )
            columns.append(header.index(key))
        while True:
            line = reader.line_num + 1  # a quoted field may span lines; report where the row starts
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise ManifestError(f"{path}:{line}: unreadable {fmt.upper()} row ({exc})") from None
            if not row:
                continue  # blank line
            if len(row) != len(header):
                raise ManifestError(
                    f"{path}:{line}: expected {len(header)} {fmt.upper()} fields {header}, found {len(row)}; "
                    "quote fields that contain the delimiter"
                )
            yield line, row[columns[0]], row[columns[1]]


def _read_header(reader, path: Path) -> list[str]:
    for row in reader:
        if row:
            return [name.strip() for name in row]
    raise ManifestError(f"{path}: the manifest is empty; it needs a header row and one row per sample")


def _jsonl_rows(path: Path, image_key: str, caption_key: str) -> Iterator[tuple[int, str, str]]:
    with open(path, encoding="utf-8-sig") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ManifestError(
                    f"{path}:{line}: invalid JSON ({exc.msg} at column {exc.colno})"
                ) from None
            if not isinstance(obj, dict):
                raise ManifestError(
                    f"{path}:{line}: expected a JSON object per line, got {type(obj).__name__}"
                )
            yield (
                line,
                _json_string(obj, image_key, path, line),
                _json_string(obj, caption_key, path, line, True),
            )


def _json_string(obj: dict, key: str, path: Path, line: int, null_ok: bool = False) -> str:
    if key not in obj:
        raise ManifestError(
            f"{path}:{line}: missing key {key!r} (keys: {sorted(obj)}); "
            "set DataConfig.image_key / caption_key to the keys the file uses"
        )
    value = obj[key]
    if value is None and null_ok:
        return ""
    if not isinstance(value, str):
        raise ManifestError(f"{path}:{line}: {key!r} must be a string, got {type(value).__name__}")
    return value
