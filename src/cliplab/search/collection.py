"""One or several embedding folders read as one collection: vectors (memory-mapped) and metadata.

Rows are numbered across the folders in the order given, then by part, then by row within a part;
that number is a row's id in the index and in the search API. Vectors are read from the ``.npy``
parts with ``np.load(mmap_mode="r")``: only the rows asked for are paged in, so a collection larger
than memory can be indexed and re-scored.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from .embed import part_name, read_info


class EmbeddingFolder:
    """A finished ``cliplab embed`` output folder."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).resolve()
        info = read_info(self.path) if self.path.is_dir() else None
        if info is None:
            raise UsageError(
                f"{path} holds no cliplab embeddings (no embed.json); run cliplab embed --out {path} first"
            )
        if not info.get("complete"):
            raise UsageError(
                f"{path}: the embedding job did not finish; run the same cliplab embed command again to complete it"
            )
        self.info = info
        self.parts = [self.path / part_name(p, "npy") for p in range(int(info["parts"]))]
        missing = [p for p in self.parts if not p.is_file()]
        if missing:
            raise UsageError(f"{missing[0]} is missing; re-run cliplab embed --out {path}")

    @property
    def digest(self) -> str:
        """SHA-256 of embed.json: changes whenever the folder is re-embedded."""
        return hashlib.sha256((self.path / "embed.json").read_bytes()).hexdigest()

    def arrays(self) -> list[np.ndarray]:
        """The parts, memory-mapped (read-only); no pickled object is ever loaded."""
        return [np.load(p, mmap_mode="r", allow_pickle=False) for p in self.parts]


class Collection:
    """Several embedding folders of one model, concatenated."""

    def __init__(self, folders: Sequence[str | os.PathLike]) -> None:
        if not folders:
            raise UsageError("give at least one embedding folder")
        self.folders = [EmbeddingFolder(f) for f in folders]
        first = self.folders[0]
        for other in self.folders[1:]:
            if other.info["model"]["fingerprint"] != first.info["model"]["fingerprint"]:
                raise UsageError(
                    f"{other.path} was embedded with another model than {first.path}; only folders embedded "
                    "with the same model can share an index"
                )
        self.model = first.info["model"]
        self.dim = int(first.info["embed_dim"])
        self._arrays = [a for f in self.folders for a in f.arrays()]
        for part, array in zip((p for f in self.folders for p in f.parts), self._arrays, strict=True):
            if array.ndim != 2 or array.shape[1] != self.dim:
                raise UsageError(
                    f"{part} has shape {array.shape}, expected (n, {self.dim}); re-run cliplab embed"
                )
        sizes = [len(a) for a in self._arrays]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.n = int(self.offsets[-1])
        self._metadata = None

    def __len__(self) -> int:
        return self.n

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """float32 [len(rows), D] for the given row ids (any order, repeats allowed)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        parts = np.searchsorted(self.offsets, rows, side="right") - 1
        for part in np.unique(parts):
            sel = np.flatnonzero(parts == part)
            local = rows[sel] - self.offsets[part]
            order = np.argsort(local)  # page in each part front to back
            out[sel[order]] = self._arrays[part][local[order]]
        return out

    def chunks(self, size: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, float32 block)`` over the whole collection, ``size`` rows at a time."""
        for offset, array in zip(self.offsets[:-1], self._arrays, strict=False):
            for start in range(0, len(array), size):
                yield int(offset) + start, np.ascontiguousarray(array[start : start + size], dtype=np.float32)

    def metadata(self):
        """A pyarrow table of every row (id, source, caption, width, height, file, offset, size, folder)."""
        if self._metadata is None:
            import pyarrow as pa
            import pyarrow.parquet as pq

            tables = []
            for number, folder in enumerate(self.folders):
                for npy in folder.parts:
                    table = pq.read_table(npy.with_suffix(".parquet"))
                    tables.append(
                        table.append_column("folder", pa.array([number] * table.num_rows, pa.int32()))
                    )
            self._metadata = pa.concat_tables(tables).combine_chunks()
            if self._metadata.num_rows != self.n:
                raise UsageError(
                    f"the metadata of {', '.join(str(f.path) for f in self.folders)} has {self._metadata.num_rows} "
                    f"rows but the parts hold {self.n} vectors; re-run cliplab embed"
                )
        return self._metadata

    def sources(self) -> list[dict[str, Any]]:
        """What an index records about each folder, to notice a folder re-embedded later."""
        return [
            {"path": str(f.path), "n": int(f.info["n_embedded"]), "embed_json_sha256": f.digest}
            for f in self.folders
        ]
