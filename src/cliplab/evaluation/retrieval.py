"""Image-text retrieval (the paper's zero-shot retrieval protocol on Flickr30k and MSCOCO).

Every image has one or more captions. Image -> text: an image counts as retrieved correctly at k if
ANY of its captions is among the top k texts. Text -> image: a caption counts if its own image is
among the top k images. Both are reported as recall@k, a fraction in [0, 1].

The metrics never hold the full (queries x gallery) similarity matrix: queries are processed in
chunks against all gallery features, and for each query only one number is kept, the *rank* of its
best correct match (0 = first).

Ties. With ``ties="pessimistic"`` (the default) the rank is the number of *incorrect* gallery items
scoring at least as high as the best correct one: a tie is resolved against the query. With
``ties="optimistic"`` it is the number of gallery items scoring strictly higher: a tie is resolved in
the query's favour. Pessimistic is the default because under the optimistic rule a collapsed model
that maps every input to the same vector would score a perfect recall.

The second half of the module reads retrieval datasets (CSV/JSONL, COCO captions JSON, Karpathy-split
JSON) and runs a model over one (:func:`run_retrieval`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data.manifest import (
    CAPTION_COLUMNS,
    IMAGE_COLUMNS,
    MANIFEST_SUFFIXES,
    Column,
    ManifestError,
    read_table,
)
from ..errors import UsageError
from ..fileio import atomic_torch_save, read_text
from ..zeroshot.classifier import model_device
from .datasets import FileDataset, Transform

TIES = ("pessimistic", "optimistic")


def _check_inputs(
    image_features: torch.Tensor, text_features: torch.Tensor, text_to_image: torch.Tensor, ties: str
) -> None:
    if ties not in TIES:
        raise ValueError(f"ties={ties!r}; expected one of {TIES}")
    if (
        image_features.ndim != 2
        or text_features.ndim != 2
        or image_features.shape[1] != text_features.shape[1]
    ):
        raise ValueError(
            f"expected image features (N, D) and text features (M, D); got {tuple(image_features.shape)} "
            f"and {tuple(text_features.shape)}"
        )
    if text_to_image.shape != (text_features.shape[0],):
        raise ValueError(
            f"text_to_image must have one entry per text ({text_features.shape[0]}); got shape {tuple(text_to_image.shape)}"
        )
    n = image_features.shape[0]
    if len(text_to_image) and (int(text_to_image.min()) < 0 or int(text_to_image.max()) >= n):
        raise ValueError(f"text_to_image holds indices outside [0, {n}) (there are {n} images)")
    counts = torch.bincount(text_to_image.cpu(), minlength=n)
    if n and int(counts.min()) == 0:
        missing = torch.nonzero(counts == 0).flatten()[:5].tolist()
        raise ValueError(
            f"{int((counts == 0).sum())} image(s) have no caption (first indices: {missing}); "
            "drop images without captions before computing retrieval metrics"
        )


def _recalls(ranks: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    return {k: float((ranks < k).double().mean()) if len(ranks) else float("nan") for k in ks}


def _count_above(scores: torch.Tensor, threshold: torch.Tensor, strict: bool) -> torch.Tensor:
    """Per row, how many scores are above (``strict``) or at least ``threshold[row]``.

    Counted over column slices: summing a boolean tensor makes an int64 copy of it, twice the
    size of the float scores, which would triple the memory of a chunk.
    """
    rows, cols = scores.shape
    width = max(1, (1 << 22) // max(rows, 1))  # about 4M elements of temporaries
    counts = torch.zeros(rows, dtype=torch.long, device=scores.device)
    for a in range(0, cols, width):
        block = scores[:, a : a + width]
        counts += (block > threshold if strict else block >= threshold).sum(1)
    return counts


def text_to_image_ranks(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    text_to_image: torch.Tensor,
    *,
    chunk_size: int = 1024,
    ties: str = "pessimistic",
) -> torch.Tensor:
    """For each text, the rank of its own image among all images (0 = best), computed in chunks."""
    ranks = torch.empty(len(text_features), dtype=torch.long)
    targets = text_to_image.to(image_features.device)
    for start in range(0, len(text_features), chunk_size):
        end = min(start + chunk_size, len(text_features))
        scores = text_features[start:end] @ image_features.T  # (chunk, N)
        correct = scores.gather(1, targets[start:end, None])  # (chunk, 1)
        if ties == "optimistic":
            rank = _count_above(scores, correct, strict=True)
        else:  # the own image ties with itself: subtract it
            rank = _count_above(scores, correct, strict=False) - 1
        ranks[start:end] = rank.cpu()
        del scores  # free this block before the next one is allocated: one block at a time
    return ranks


def image_to_text_ranks(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    text_to_image: torch.Tensor,
    *,
    chunk_size: int = 1024,
    ties: str = "pessimistic",
) -> torch.Tensor:
    """For each image, the rank of its best-scoring caption among all texts (0 = best), in chunks."""
    device = image_features.device
    n = len(image_features)
    # Sorting texts by image makes the captions of images [start, end) one contiguous slice.
    t2i = text_to_image.to(device)
    order = torch.argsort(t2i, stable=True)
    offsets = torch.zeros(n + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(torch.bincount(text_to_image.cpu(), minlength=n), 0)
    ranks = torch.empty(n, dtype=torch.long)
    for start in range(0, n, chunk_size):
        end = min(start + chunk_size, n)
        scores = image_features[start:end] @ text_features.T  # (chunk, M)
        own_texts = order[int(offsets[start]) : int(offsets[end])]
        own_rows = t2i[own_texts] - start
        own_scores = scores[own_rows, own_texts]
        best = torch.full((end - start,), float("-inf"), dtype=scores.dtype, device=device)
        best.scatter_reduce_(0, own_rows, own_scores, reduce="amax")
        if ties == "optimistic":  # no own caption can be strictly above the best one
            rank = _count_above(scores, best[:, None], strict=True)
        else:  # drop the image's own captions that tie with (or are) the best one
            own_at_best = torch.zeros(end - start, dtype=torch.long, device=device)
            own_at_best.scatter_add_(0, own_rows, (own_scores >= best[own_rows]).long())
            rank = _count_above(scores, best[:, None], strict=False) - own_at_best
        ranks[start:end] = rank.cpu()
        del scores  # free this block before the next one is allocated: one block at a time
    return ranks


def retrieval_metrics(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
    ties: str = "pessimistic",
) -> dict[str, float]:
    """Recall@k in both directions from (normalised) image and text features.

    ``text_to_image[j]`` is the index of the image caption ``j`` describes. Similarities are plain dot
    products, so pass L2-normalised features for cosine similarity. At most ``chunk_size`` queries are
    scored at once, so memory is ``chunk_size x max(N, M)`` scores. Returns
    ``image_to_text_recall@k`` and ``text_to_image_recall@k`` for each k, plus the mean ranks
    (0-based) and the numbers of images and texts. See the module docstring for ``ties``.
    """
    text_to_image = torch.as_tensor(text_to_image, dtype=torch.long)
    _check_inputs(image_features, text_features, text_to_image, ties)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    text_features = text_features.to(image_features.device, image_features.dtype)
    i2t = image_to_text_ranks(image_features, text_features, text_to_image, chunk_size=chunk_size, ties=ties)
    t2i = text_to_image_ranks(image_features, text_features, text_to_image, chunk_size=chunk_size, ties=ties)
    return _metrics_from_ranks(i2t, t2i, ks)


def _metrics_from_ranks(i2t: torch.Tensor, t2i: torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, r in _recalls(i2t, ks).items():
        out[f"image_to_text_recall@{k}"] = r
    for k, r in _recalls(t2i, ks).items():
        out[f"text_to_image_recall@{k}"] = r
    out["image_to_text_mean_rank"] = float(i2t.double().mean()) if len(i2t) else float("nan")
    out["text_to_image_mean_rank"] = float(t2i.double().mean()) if len(t2i) else float("nan")
    out["n_images"] = len(i2t)
    out["n_texts"] = len(t2i)
    return out


def _rank_by_sorting(scores: list[float], correct: set[int], ties: str) -> int:
    # Sort the gallery by score; among equal scores put correct items last (pessimistic) or first
    # (optimistic); the rank is the position of the first correct item.
    favour = 1 if ties == "pessimistic" else -1
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], favour * (j in correct)))
    return next(pos for pos, j in enumerate(order) if j in correct)


def retrieval_metrics_reference(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    text_to_image: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    ties: str = "pessimistic",
) -> dict[str, float]:
    """The slow, obvious version of :func:`retrieval_metrics` (full matrix, one sort per query).

    For testing only: it holds the whole similarity matrix and sorts in Python.
    """
    text_to_image = torch.as_tensor(text_to_image, dtype=torch.long)
    _check_inputs(image_features, text_features, text_to_image, ties)
    sims = (image_features @ text_features.T).tolist()  # (N, M)
    owners = text_to_image.tolist()
    captions: list[set[int]] = [set() for _ in range(len(image_features))]
    for j, i in enumerate(owners):
        captions[i].add(j)
    i2t = [_rank_by_sorting(row, captions[i], ties) for i, row in enumerate(sims)]
    columns = list(zip(*sims, strict=True)) if sims else []
    t2i = [_rank_by_sorting(list(col), {owners[j]}, ties) for j, col in enumerate(columns)]
    return _metrics_from_ranks(torch.tensor(i2t, dtype=torch.long), torch.tensor(t2i, dtype=torch.long), ks)


# --- retrieval datasets -------------------------------------------------------------------------


@dataclass
class CaptionSet:
    """Images with one or more captions each: ``captions[j]`` describes ``images[text_to_image[j]]``."""

    images: list[Path]
    captions: list[str]
    text_to_image: list[int]
    source: Path
    n_images_without_captions: int = 0  # listed in the file but dropped: nothing to retrieve them by

    def __len__(self) -> int:
        return len(self.images)


def load_captions(
    path: str | os.PathLike,
    *,
    images_root: str | os.PathLike | None = None,
    image_column: str | None = None,
    caption_column: str | None = None,
    split: str | None = "test",
) -> CaptionSet:
    """Read a retrieval dataset; the format follows from the file.

    - ``.csv`` / ``.tsv`` / ``.jsonl``: one row per (image, caption) pair, so an image with five captions
      has five rows. The file is read by ``cliplab.data.manifest.read_table``, as training
      manifests are, so a manifest written by ``cliplab data synthetic --format files`` works as is.
      ``image_column`` defaults to the first of "filepath", "path", "image" in the file,
      ``caption_column`` to the first of "caption", "text". In JSONL the caption may also be a
      list of strings.
    - ``.json`` with ``images`` and ``annotations`` (COCO ``annotations/captions_*.json``): images by
      ``id`` and ``file_name``, captions by ``image_id`` and ``caption``.
    - ``.json`` whose ``images`` entries have ``sentences`` (Karpathy's ``dataset_coco.json`` /
      ``dataset_flickr30k.json``): captions are ``sentences[].raw``, paths ``filepath/filename``, and
      only images of ``split`` are kept (``None`` keeps all).

    Relative image paths are resolved against ``images_root``, or the file's folder if it is None.
    Malformed files raise ``ManifestError`` naming the file and line (or entry).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        data = _read_json(path)
        root = Path(images_root) if images_root is not None else path.resolve().parent
        if isinstance(data, dict) and "annotations" in data and "images" in data:
            return _coco(data, root, path)
        if isinstance(data, dict) and isinstance(data.get("images"), list) and _has_sentences(data["images"]):
            return _karpathy(data, root, path, split)
        raise ManifestError(
            f"{path}: not a COCO captions file (needs 'images' and 'annotations') nor a Karpathy split file "
            "(needs 'images' with 'sentences'); for one row per pair use .csv or .jsonl"
        )
    if suffix in MANIFEST_SUFFIXES:
        return _from_table(path, images_root, image_column, caption_column)
    raise ManifestError(
        f"{path}: unknown retrieval dataset format {suffix!r}; use .csv, .tsv, .jsonl or .json"
    )


def _read_json(path: Path) -> Any:
    try:
        text = read_text(path, "retrieval dataset")
    except UsageError as exc:
        raise ManifestError(str(exc)) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None


def _from_table(
    path: Path, images_root: str | os.PathLike | None, image_column: str | None, caption_column: str | None
) -> CaptionSet:
    table = read_table(
        path,
        [
            Column.named("image", image_column, IMAGE_COLUMNS, "image_column= (--image-column)"),
            Column.named("caption", caption_column, CAPTION_COLUMNS, "caption_column= (--caption-column)"),
        ],
    )
    root = Path(images_root) if images_root is not None else table.root
    index: dict[Path, int] = {}  # image path -> image index, in order of first appearance
    captions, owners = [], []
    for row in table.rows:
        image = table.image_path(row, 0, root)
        value = row.values[1]
        for caption in value if isinstance(value, list) else [value]:
            owners.append(index.setdefault(image, len(index)))
            captions.append(_caption(caption, f"{table.where(row)}: column {table.columns[1]!r}"))
    return CaptionSet(list(index), captions, owners, path)


def _caption(value: object, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"{where}: empty or missing caption; every row needs one")
    return value.strip()


def _coco(data: dict, root: Path, source: Path) -> CaptionSet:
    ids: dict[object, int] = {}
    files = []
    for n, image in enumerate(data["images"]):
        if "id" not in image or "file_name" not in image:
            raise ManifestError(f"{source}: images[{n}] needs 'id' and 'file_name'")
        ids[image["id"]] = n
        files.append(image["file_name"])
    by_image: list[list[str]] = [[] for _ in files]
    for n, ann in enumerate(data["annotations"]):
        if ann.get("image_id") not in ids:
            raise ManifestError(
                f"{source}: annotations[{n}] refers to image_id {ann.get('image_id')!r}, not in 'images'"
            )
        by_image[ids[ann["image_id"]]].append(_caption(ann.get("caption"), f"{source}: annotations[{n}]"))
    return _from_lists(files, by_image, root, source)


def _has_sentences(images: list) -> bool:
    return any(isinstance(im, dict) and "sentences" in im for im in images)


def _karpathy(data: dict, root: Path, source: Path, split: str | None) -> CaptionSet:
    chosen = [im for im in data["images"] if split is None or im.get("split") == split]
    if not chosen:
        splits = sorted({str(im.get("split")) for im in data["images"]})
        raise ManifestError(f"{source}: no images in split {split!r}; the file has splits {splits}")
    files, by_image = [], []
    for n, im in enumerate(chosen):
        if "filename" not in im:
            raise ManifestError(f"{source}: image {n} of split {split!r} has no 'filename'")
        files.append(str(Path(im.get("filepath", "")) / im["filename"]))
        by_image.append(
            [_caption(s.get("raw"), f"{source}: image {im['filename']}") for s in im["sentences"]]
        )
    return _from_lists(files, by_image, root, source)


def _from_lists(files: list[str], by_image: list[list[str]], root: Path, source: Path) -> CaptionSet:
    kept = [(f, caps) for f, caps in zip(files, by_image, strict=True) if caps]
    images = [root / f for f, _ in kept]  # an absolute f replaces root
    captions = [c for _, caps in kept for c in caps]
    owners = [i for i, (_, caps) in enumerate(kept) for _ in caps]
    return CaptionSet(images, captions, owners, source, n_images_without_captions=len(files) - len(kept))


# --- running a model over a retrieval dataset -----------------------------------------------------


class CaptionImages(FileDataset):
    """The images of a :class:`CaptionSet` as a dataset of ``(tensor, image index)``.

    Follows :mod:`cliplab.evaluation.datasets`: an unreadable image gives ``None`` and is reported by
    ``extract_image_features``, whose returned labels are then the indices of the images that loaded.
    """

    def __init__(self, captions: CaptionSet, transform: Transform | None) -> None:
        super().__init__(transform)
        self.paths = [str(p) for p in captions.images]
        self.labels = list(range(len(self.paths)))
        self.classnames = []


def encode_texts(
    model,
    tokenize: Callable[..., torch.Tensor],
    texts: Sequence[str],
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """L2-normalised float32 text features [len(texts), D], truncating captions to the model's context.

    The inference layer's :func:`cliplab.inference.encode_texts` with an explicit tokenizer;
    ``device`` defaults to the model's.
    """
    from ..inference import encode_texts as _encode

    return _encode(model, texts, tokenize=tokenize, batch_size=batch_size, device=device, progress=progress)


def _cached_texts(
    model,
    tokenize,
    texts: list[str],
    cache_dir: Path | None,
    batch_size: int,
    device: torch.device,
    progress: bool,
) -> torch.Tensor:
    # Keyed like the image-feature cache: model weights, then the captions and the context length.
    path = None
    if cache_dir is not None:
        from ..inference import model_fingerprint

        h = hashlib.sha256(f"{model_fingerprint(model)}\n{model.config.text.context_length}\n".encode())
        for t in texts:
            h.update(t.encode() + b"\n")
        path = Path(cache_dir) / f"retrieval-texts-{h.hexdigest()[:20]}.pt"
        if path.is_file():
            return torch.load(path, weights_only=True)
    features = encode_texts(model, tokenize, texts, batch_size=batch_size, device=device, progress=progress)
    if path is not None:
        atomic_torch_save(features, path)
    return features


def run_retrieval(
    model,
    preprocess: Transform,
    tokenize: Callable[..., torch.Tensor],
    data_path: str | os.PathLike,
    *,
    images_root: str | os.PathLike | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike | None = None,
    chunk_size: int = 1024,
    image_column: str | None = None,
    caption_column: str | None = None,
    split: str | None = "test",
    ties: str = "pessimistic",
    progress: bool = True,
) -> dict[str, Any]:
    """Zero-shot image-text retrieval of ``model`` on a captions file (see :func:`load_captions`).

    Returns :func:`retrieval_metrics` (``n_images`` and ``n_texts`` count what was scored) plus
    ``n_skipped`` unreadable images (their captions dropped: ``n_captions_dropped``) and up to ten
    ``skipped`` files. With ``cache_dir``, image and text features are cached there under keys that
    include the model's weights, so one folder may serve several models. ``device`` (default: the
    model's) runs both towers and the recall computation.
    """
    from .features import extract_image_features

    device = model_device(model, device)

    captions = load_captions(
        data_path,
        images_root=images_root,
        image_column=image_column,
        caption_column=caption_column,
        split=split,
    )
    dataset = CaptionImages(captions, preprocess)
    cache_path = (
        Path(cache_dir) / f"retrieval-images-{dataset.fingerprint()[:20]}.pt"
        if cache_dir is not None
        else None
    )
    image_features, kept, skipped = extract_image_features(
        model,
        dataset,
        batch_size=batch_size,
        workers=workers,
        device=device,
        cache_path=cache_path,
        progress=progress,
    )
    # Renumber the images that loaded and keep only their captions.
    new_index = torch.full((len(captions),), -1, dtype=torch.long)
    new_index[torch.as_tensor(kept, dtype=torch.long)] = torch.arange(len(kept))
    owners = new_index[torch.as_tensor(captions.text_to_image, dtype=torch.long)]
    keep = owners >= 0
    texts = [c for c, k in zip(captions.captions, keep.tolist(), strict=True) if k]
    text_features = _cached_texts(
        model, tokenize, texts, Path(cache_dir) if cache_dir else None, batch_size, device, progress
    )
    metrics = retrieval_metrics(
        image_features.to(device), text_features.to(device), owners[keep], chunk_size=chunk_size, ties=ties
    )
    metrics.update(
        n_skipped=len(skipped),
        n_captions_dropped=int((~keep).sum()),
        n_images_without_captions=captions.n_images_without_captions,
        skipped=[s.source for s in skipped[:10]],
    )
    return metrics
