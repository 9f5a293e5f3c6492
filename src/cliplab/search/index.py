"""A FAISS index over one or several embedding folders, with its recall measured when it is built.

Kinds (inner product on unit vectors, i.e. cosine similarity):

* ``exact``: ``IndexFlatIP``, brute force; the default up to ``exact_max`` vectors (100,000).
* ``ivfpq``: inverted lists over product-quantised codes (``IVF{nlist},PQ{m}x{bits}``), the default
  above it. The index holds only the codes (``dim / 8`` bytes per vector at 8 bits); each search
  takes ``rerank * k`` candidates and re-scores them exactly with the embeddings, read from the
  memory-mapped ``.npy`` parts, so scores are exact and recall is that of the candidate set.
* ``hnsw``: a graph over the full vectors (``IndexHNSWFlat``): fast and accurate, holds every vector.

Recall. Before the index is written, ``queries`` rows (default 1,000) are drawn at random and held
out of quantiser training; each is searched and its top 10 (itself excluded) compared with exact
search's. For ``ivfpq`` and ``hnsw`` the search is widened step by step (doubling ``nprobe`` or the
re-scored candidates, or ``efSearch``; at each step the one that gains most) until that recall@10
reaches ``target_recall`` (0.95) or cannot grow; the settings and the measured recall are stored
in ``index.json``. The queries are images of the collection, so the number says how well
the index approximates exact search, not how well a text query matches.

Folder: ``index.faiss`` (FAISS's own binary format: data only) and ``index.json``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OutputExistsError, UsageError
from ..fileio import atomic_write, atomic_write_json, read_text
from .collection import Collection

INDEX_FORMAT = "cliplab-index-v1"
KINDS = ("auto", "exact", "ivfpq", "hnsw")


@dataclass(frozen=True)
class IndexSettings:
    """How to build an index; see the module docstring."""

    kind: str = "auto"
    exact_max: int = 100_000
    target_recall: float = 0.95
    queries: int = 1000
    rerank: int = 4
    nlist: int | None = None
    pq_m: int | None = None
    hnsw_m: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UsageError(f"--kind {self.kind!r} is not one of {list(KINDS)}")
        for name in ("exact_max", "queries", "rerank", "hnsw_m"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.target_recall <= 1:
            raise UsageError(f"--target-recall must be in (0, 1], got {self.target_recall}")
        if self.nlist is not None and self.nlist < 1:
            raise UsageError(f"--nlist must be >= 1, got {self.nlist}")


def _faiss():
    try:
        import faiss
    except ImportError:
        raise UsageError("search needs faiss-cpu: pip install 'cliplab[search]'") from None
    return faiss


def resolve_kind(settings: IndexSettings, n: int) -> str:
    if settings.kind != "auto":
        return settings.kind
    return "exact" if n <= settings.exact_max else "ivfpq"


# ------------------------------------------------------------------------------------------ build


def _pq_shape(dim: int, n: int, available: int, settings: IndexSettings) -> tuple[int, int, int, int]:
    """(nlist, m, bits, training rows): sizes the training rows support without FAISS's warnings."""
    most = max(1, available // 39)  # FAISS wants >= 39 training points per centroid
    nlist = max(1, min(settings.nlist or 2 ** max(0, round(math.log2(math.sqrt(n)))), most))
    m = settings.pq_m or next(d for d in range(max(1, dim // 8), 0, -1) if dim % d == 0)
    if dim % m:
        raise UsageError(f"--pq-m {m} must divide the embedding dimension {dim}")
    bits = max(1, min(8, int(math.log2(max(2, most)))))
    return nlist, m, bits, min(available, 40 * max(nlist, 2**bits))


def _train_rows(n: int, held_out: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    mask = np.ones(n, dtype=bool)
    mask[held_out] = False
    rows = np.flatnonzero(mask)
    return np.sort(rng.choice(rows, size=count, replace=False)) if len(rows) > count else rows


def _new_index(kind: str, collection: Collection, held_out: np.ndarray, settings: IndexSettings, rng):
    faiss = _faiss()
    dim = collection.dim
    if kind == "exact":
        return faiss.IndexFlatIP(dim), {}
    if kind == "hnsw":
        return faiss.IndexHNSWFlat(dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT), {"M": settings.hnsw_m}
    available = len(collection) - len(held_out)
    if available < 39:
        raise UsageError(f"an ivfpq index needs more than {len(collection)} vectors; use --kind exact")
    nlist, m, bits, n_train = _pq_shape(dim, len(collection), available, settings)
    index = faiss.index_factory(dim, f"IVF{nlist},PQ{m}x{bits}", faiss.METRIC_INNER_PRODUCT)
    index.train(collection.vectors(_train_rows(len(collection), held_out, n_train, rng)))
    return index, {"nlist": nlist, "pq_m": m, "pq_bits": bits, "n_train": n_train}


def _fill(index, collection: Collection, progress: bool) -> None:
    from tqdm.auto import tqdm

    with tqdm(
        total=len(collection), desc="index", unit="vec", disable=not progress, dynamic_ncols=True
    ) as bar:
        for _, block in collection.chunks():
            index.add(block)
            bar.update(len(block))


def exact_neighbours(collection: Collection, queries: np.ndarray, k: int, chunk: int = 16384) -> np.ndarray:
    """Row ids [len(queries), k] of the k best rows by inner product: plain numpy, block by block."""
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(queries), 0), dtype=np.int64)
    for start, block in collection.chunks(chunk):
        scores = np.concatenate([best_scores, queries @ block.T], axis=1)
        rows = np.concatenate(
            [
                best_rows,
                np.broadcast_to(np.arange(start, start + len(block)), scores[:, best_rows.shape[1] :].shape),
            ],
            axis=1,
        )
        if scores.shape[1] > k:
            keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            scores, rows = np.take_along_axis(scores, keep, 1), np.take_along_axis(rows, keep, 1)
        order = np.argsort(-scores, axis=1, kind="stable")
        best_scores, best_rows = np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)
    return best_rows


def recall_at(found: np.ndarray, truth: np.ndarray, own: np.ndarray, k: int = 10) -> float:
    """Mean |found ∩ truth| / |truth| over queries, each query's own row removed from both lists first.

    ``truth`` holds each query's k + 1 best rows; a collection of one vector has nothing to recall (1.0).
    """
    scores = []
    for f, t, q in zip(found, truth, own, strict=True):
        t = [r for r in t if r != q][:k]
        if t:
            f = [r for r in f if r != q and r >= 0][:k]
            scores.append(len(set(f) & set(t)) / len(t))
    return float(np.mean(scores)) if scores else 1.0


# ---------------------------------------------------------------------------------------- search


class SearchIndex:
    """A FAISS index and its collection; :meth:`search` gives exact scores for every kind."""

    def __init__(self, index, collection: Collection, info: dict[str, Any]) -> None:
        self.index, self.collection, self.info = index, collection, info
        self.kind = info["kind"]
        self.configure()

    def configure(self) -> None:
        """Read the search breadth from ``info["params"]``; searches pass it per call, never set it on the index."""
        faiss, params = _faiss(), self.info["params"]
        self.rerank = int(params.get("rerank", 1))
        self._params = None
        if self.kind == "ivfpq":
            self._params = faiss.SearchParametersIVF(nprobe=int(params["nprobe"]))
        elif self.kind == "hnsw":
            self._params = faiss.SearchParametersHNSW(efSearch=int(params["efSearch"]))

    def __len__(self) -> int:
        return len(self.collection)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), both [len(queries), min(k, n)], best first; scores are exact inner products."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = min(k, len(self))
        fetch = min(k * self.rerank, len(self)) if self.kind == "ivfpq" else k
        scores, rows = self.index.search(queries, fetch, params=self._params)
        if self.kind != "ivfpq":
            return scores, rows
        return self._rescore(queries, rows, k)

    def _rescore(self, queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_rows = np.full((len(queries), k), -1, dtype=np.int64)
        for i, (q, r) in enumerate(zip(queries, rows, strict=True)):
            r = r[r >= 0]
            exact = self.collection.vectors(r) @ q
            top = np.argsort(-exact, kind="stable")[:k]
            out_scores[i, : len(top)], out_rows[i, : len(top)] = exact[top], r[top]
        return out_scores, out_rows


def _wider(kind: str, params: dict[str, Any]) -> list[dict[str, int]]:
    """One step wider in each direction the index can widen, the cheaper first."""
    if kind == "ivfpq":  # re-scoring more candidates is cheaper than scanning more lists
        return [{"rerank": 2 * params["rerank"]}] * (params["rerank"] < 64) + [
            {"nprobe": min(2 * params["nprobe"], params["nlist"])}
        ] * (params["nprobe"] < params["nlist"])
    if kind == "hnsw":
        return [{"efSearch": 2 * params["efSearch"]}] * (params["efSearch"] < 4096)
    return []


def _tune(
    index: SearchIndex, queries: np.ndarray, own: np.ndarray, truth: np.ndarray, target: float
) -> float:
    """Widen the search greedily (the step that gains most recall, the cheaper on a tie) until recall@10 >= target."""
    params = index.info["params"]

    def measure(change: dict[str, int]) -> float:
        before = dict(params)
        params.update(change)
        index.configure()
        recall = recall_at(index.search(queries, 11)[1], truth, own)
        params.clear()
        params.update(before)
        return recall

    recall = measure({})
    while recall < target:
        steps = [(measure(step), -i, step) for i, step in enumerate(_wider(index.kind, params))]
        if not steps:
            break
        recall, _, step = max(steps)
        params.update(step)
    index.configure()
    return recall


def build_index(
    folders: list[str | os.PathLike],
    out: str | os.PathLike,
    settings: IndexSettings = IndexSettings(),
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Build, measure and write an index over ``folders``; returns what ``index.json`` records."""
    out = Path(out)
    collection = Collection(folders)
    check_index_output(out, overwrite)
    if len(collection) == 0:
        raise UsageError(f"{', '.join(map(str, folders))} hold no embeddings (every image was skipped?)")
    started = time.perf_counter()
    rng = np.random.default_rng(settings.seed)
    kind = resolve_kind(settings, len(collection))
    own = np.sort(rng.choice(len(collection), size=min(settings.queries, len(collection)), replace=False))
    raw, params = _new_index(kind, collection, own, settings, rng)
    _fill(raw, collection, progress)
    params |= {"ivfpq": {"nprobe": 1, "rerank": settings.rerank}, "hnsw": {"efSearch": 16}}.get(kind, {})
    info = {"format": INDEX_FORMAT, "kind": kind, "n": len(collection), "dim": collection.dim,
            "metric": "inner_product", "params": params, "sources": collection.sources(),
            "model": collection.model}  # fmt: skip
    queries = collection.vectors(own)
    truth = exact_neighbours(collection, queries, 11)
    recall = _tune(SearchIndex(raw, collection, info), queries, own, truth, settings.target_recall)
    info |= {"recall_at_10": recall, "recall_queries": len(own), "settings": asdict(settings),
             "build_seconds": round(time.perf_counter() - started, 3)}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    faiss = _faiss()
    atomic_write(out / "index.faiss", lambda tmp: faiss.write_index(raw, str(tmp)))
    atomic_write_json(out / "index.json", info)
    return info


def check_index_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        what = "an index" if (out / "index.json").is_file() else "other files"
        raise OutputExistsError(
            f"{out} already holds {what}; pass --overwrite to replace the index or choose another --out"
        )


# ------------------------------------------------------------------------------------------ open


def find_index(path: str | os.PathLike) -> Path:
    """The index folder: ``path`` itself, or ``path/index`` for an embedding folder."""
    path = Path(path)
    for candidate in (path, path / "index"):
        if (candidate / "index.json").is_file():
            return candidate
    if (path / "embed.json").is_file():
        raise UsageError(f"{path} has embeddings but no index; run cliplab index {path} first")
    raise UsageError(f"{path} holds no cliplab index (index.json); run cliplab embed and cliplab index first")


def open_index(path: str | os.PathLike, *, mmap: bool = False) -> SearchIndex:
    """Open an index folder (or an embedding folder with ``index/``), checking it is not stale.

    ``mmap=True`` memory-maps the FAISS file instead of reading it into memory.
    """
    folder = find_index(path)
    try:
        info = json.loads(read_text(folder / "index.json", "index description"))
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{folder / 'index.json'}:{exc.lineno}: invalid JSON; rebuild with cliplab index"
        ) from None
    if not isinstance(info, dict) or info.get("format") != INDEX_FORMAT:
        raise UsageError(
            f"{folder / 'index.json'} is not a cliplab index ({INDEX_FORMAT}); rebuild it with cliplab index"
        )
    collection = Collection([s["path"] for s in info["sources"]])
    for recorded, now in zip(info["sources"], collection.sources(), strict=True):
        if recorded["embed_json_sha256"] != now["embed_json_sha256"]:
            raise UsageError(
                f"{now['path']} was embedded again after the index in {folder} was built; rebuild it with cliplab index"
            )
    faiss = _faiss()
    flags = 0
    if (
        mmap
    ):  # inverted lists are mapped by IO_FLAG_MMAP, flat codes (exact, HNSW storage) by IO_FLAG_MMAP_IFC
        flat = getattr(faiss, "IO_FLAG_MMAP_IFC", faiss.IO_FLAG_MMAP)
        flags = (faiss.IO_FLAG_MMAP if info.get("kind") == "ivfpq" else flat) | faiss.IO_FLAG_READ_ONLY
    try:
        raw = faiss.read_index(str(folder / "index.faiss"), flags)
    except RuntimeError as exc:
        raise UsageError(
            f"cannot read {folder / 'index.faiss'} ({str(exc).splitlines()[0][:200]}); rebuild it"
        ) from None
    if raw.ntotal != len(collection) or raw.d != collection.dim:
        raise UsageError(
            f"{folder / 'index.faiss'} does not match its embeddings; rebuild it with cliplab index"
        )
    return SearchIndex(raw, collection, info)
