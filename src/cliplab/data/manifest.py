"""The one reader of tabular manifests: CSV, TSV and JSON Lines files with a row per sample.

Training (image + caption), classification (image + label) and retrieval (image + caption, several
rows per image) all read their files through :func:`read_table`, so every manifest behaves the same:

* The format comes from the extension (``.csv``; ``.tsv``/``.tab``; ``.jsonl``/``.ndjson``/``.json``).
  CSV and TSV files start with a header row naming the columns; JSON Lines files hold one object
  per line. Blank lines are ignored.
* Text is UTF-8, with or without a byte-order mark, or UTF-16 with a byte-order mark (as spreadsheet
  programs save it). Any other encoding is an error naming the file and line (see
  :func:`cliplab.fileio.read_text`).
* A column given by name must exist. Left unnamed, the first of its default names that the file has
  is used: ``IMAGE_COLUMNS`` ("filepath", "path", "image") for the image path, ``CAPTION_COLUMNS``
  ("caption", "text") for the caption. ``cliplab data synthetic`` writes "filepath" and "caption".
* Relative image paths are resolved against the manifest's own directory (or a root the caller
  gives), so a dataset folder can be moved as a whole.
* Every problem is a :class:`ManifestError` whose message starts ``file:line:`` and names the column
  or key and the fix.

:func:`read_manifest` is the training reader. It checks every line before training starts; an empty
caption is not malformed: the loader skips such samples at run time and counts them, like missing or
corrupt image files.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CliplabError, UsageError
from ..fileio import read_text

CSV_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
MANIFEST_SUFFIXES = (*CSV_SUFFIXES, *JSONL_SUFFIXES)
IMAGE_COLUMNS = ("filepath", "path", "image")
CAPTION_COLUMNS = ("caption", "text")


class ManifestError(CliplabError, ValueError):
    """A manifest file is malformed; the message names the file, the line and what to fix."""


@dataclass(frozen=True)
class Column:
    """A column a reader needs: the names to try, in order, and the setting that names another.

    ``role`` ("image", "caption", "label") and ``setting`` (e.g. ``"DataConfig.image_key"``) only
    word the error when no name matches.
    """

    role: str
    names: tuple[str, ...]
    setting: str

    @classmethod
    def named(cls, role: str, name: str | None, defaults: Sequence[str], setting: str) -> Column:
        """``name`` when given (it overrides), else the defaults tried in order."""
        return cls(role, (name,) if name else tuple(defaults), setting)

    def missing(self, where: str, present: Sequence[str], kind: str = "column") -> ManifestError:
        """The error for a header (``kind="column"``) or JSON object (``"key"``) without this column."""
        if len(self.names) == 1:
            what = f"no {kind} {self.names[0]!r}"
        else:
            what = f"no {self.role} {kind} (looked for {', '.join(map(repr, self.names))})"
        holder = "the header has columns" if kind == "column" else "this line has keys"
        return ManifestError(
            f"{where}: {what}; {holder} {list(present)}. Name the {self.role} {kind} with {self.setting}"
        )


@dataclass
class Row:
    """One sample's values, in the order of the requested columns, and the line it starts on.

    CSV/TSV values are strings; JSON Lines values are whatever the JSON holds (check them with
    :meth:`Table.text`).
    """

    line: int
    values: tuple[Any, ...]


@dataclass
class Table:
    """A manifest's rows; ``columns`` are the names chosen for the requested columns, ``root``
    the manifest's own (absolute) folder, against which relative image paths are resolved."""

    path: Path
    columns: tuple[str, ...]
    rows: list[Row]

    @property
    def root(self) -> Path:
        return self.path.resolve().parent

    def where(self, row: Row) -> str:
        return f"{self.path}:{row.line}"

    def text(self, row: Row, i: int, *, null_ok: bool = False) -> str:
        """Value ``i`` of ``row`` as a string; a JSON ``null`` is "" when ``null_ok``."""
        value = row.values[i]
        if value is None and null_ok:
            return ""
        if not isinstance(value, str):
            raise ManifestError(
                f"{self.where(row)}: {self.columns[i]!r} must be a string, got {type(value).__name__}"
            )
        return value

    def image_path(self, row: Row, i: int, root: str | os.PathLike | None = None) -> Path:
        """Value ``i`` of ``row`` as an image path, resolved against ``root`` (default: the manifest's folder)."""
        name = self.text(row, i).strip()
        if not name:
            raise ManifestError(f"{self.where(row)}: empty image path in column {self.columns[i]!r}")
        return Path(root if root is not None else self.root) / name  # an absolute `name` replaces root


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


def read_table(path: str | os.PathLike, columns: Sequence[Column]) -> Table:
    """Read a manifest's ``columns`` from every row, in file order.

    Raises ``ManifestError`` naming ``file:line`` for a file that does not exist or is not UTF-8/
    UTF-16, an unknown extension, a missing column or key (listing those present), a row with the
    wrong number of fields, invalid JSON, a line that is not an object, or a file without rows.
    """
    path = Path(path)
    fmt = manifest_format(path)
    try:
        text = read_text(path, "manifest")
    except UsageError as exc:
        raise ManifestError(str(exc)) from None
    if fmt == "jsonl":
        table = _jsonl_table(path, text, columns)
    else:
        table = _csv_table(path, text, CSV_SUFFIXES[path.suffix.lower()], columns)
    if not table.rows:
        raise ManifestError(f"{path}: the manifest has no samples (only a header or blank lines)")
    return table


def _csv_table(path: Path, text: str, delimiter: str, columns: Sequence[Column]) -> Table:
    fmt = "CSV" if delimiter == "," else "TSV"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = _read_header(reader, path, fmt)
    where = f"{path}:{reader.line_num}"
    chosen = []
    for column in columns:
        name = next((n for n in column.names if n in header), None)
        if name is None:
            raise column.missing(where, header)
        chosen.append(name)
    indices = [header.index(name) for name in chosen]
    rows = []
    while True:
        line = reader.line_num + 1  # a quoted field may span lines; report where the row starts
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise ManifestError(f"{path}:{line}: unreadable {fmt} row ({exc})") from None
        if not fields:
            continue  # blank line
        if len(fields) != len(header):
            raise ManifestError(
                f"{path}:{line}: expected {len(header)} {fmt} fields {header}, found {len(fields)}; "
                "quote fields that contain the delimiter"
            )
        rows.append(Row(line, tuple(fields[i] for i in indices)))
    return Table(path, tuple(chosen), rows)


def _read_header(reader, path: Path, fmt: str) -> list[str]:
    for fields in reader:
        if fields:
            return [name.strip() for name in fields]
    raise ManifestError(
        f"{path}: the manifest is empty; a {fmt} manifest needs a header row and one row per sample"
    )


def _jsonl_table(path: Path, text: str, columns: Sequence[Column]) -> Table:
    chosen: list[str] | None = None
    rows = []
    for line, content in enumerate(text.split("\n"), start=1):
        if not content.strip():
            continue
        try:
            obj = json.loads(content)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path}:{line}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise ManifestError(f"{path}:{line}: expected a JSON object per line, got {type(obj).__name__}")
        if chosen is None:  # the first object decides which of the default keys the file uses
            chosen = []
            for column in columns:
                name = next((n for n in column.names if n in obj), None)
                if name is None:
                    raise column.missing(f"{path}:{line}", sorted(obj), kind="key")
                chosen.append(name)
        for name, column in zip(chosen, columns, strict=True):
            if name not in obj:
                raise Column(column.role, (name,), column.setting).missing(
                    f"{path}:{line}", sorted(obj), kind="key"
                )
        rows.append(Row(line, tuple(obj[name] for name in chosen)))
    return Table(path, tuple(chosen or ()), rows)


def read_manifest(
    path: str | os.PathLike, image_key: str | None = None, caption_key: str | None = None
) -> list[tuple[str, str]]:
    """Read and validate a training manifest; return ``(absolute image path, caption)`` pairs in file order.

    ``image_key``/``caption_key`` name the columns (JSON keys); None tries ``IMAGE_COLUMNS`` and
    ``CAPTION_COLUMNS``. Raises ``ManifestError`` with ``file:line`` for anything :func:`read_table`
    refuses, a non-string value or an empty image path. Image files are not opened here; a missing
    image is skipped (and counted) by the loader, not treated as a malformed manifest. A ``null``
    JSON caption is read as an empty caption.
    """
    table = read_table(
        path,
        [
            Column.named("image", image_key, IMAGE_COLUMNS, "DataConfig.image_key (data.image_key)"),
            Column.named(
                "caption", caption_key, CAPTION_COLUMNS, "DataConfig.caption_key (data.caption_key)"
            ),
        ],
    )
    root = table.root
    return [(str(table.image_path(row, 0, root)), table.text(row, 1, null_ok=True)) for row in table.rows]
