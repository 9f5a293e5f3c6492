"""cliplab's own checkpoint format: safetensors weights plus a JSON header that describes them.

A checkpoint is a directory::

    model.safetensors   the state dict (OpenAI's key layout), nothing executable
    config.json         {"format": "cliplab", "version": 1, "model": CLIPConfig, "preprocess": ..., "extra": {...}}
    README.md           with ``card=True`` (as ``cliplab.save`` does): the model card (see ``card.py``);
                        a README.md the user wrote is kept

The same JSON header is also stored in the safetensors metadata under ``"cliplab"``, so the weights
file alone is self-describing; saving to a path ending in ``.safetensors`` writes only that file.
Writes are atomic (:mod:`cliplab.fileio`: temporary file or directory, then rename).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from ..fileio import atomic_write, atomic_write_dir
from ..models import CLIP, CLIPConfig
from ..transforms import PreprocessConfig
from .card import CARD_FILE, find_run_dir, model_card, write_card
from .common import (
    CheckpointError,
    Loaded,
    default_preprocess,
    read_json,
    read_safetensors,
    safetensors_metadata,
    unwrap_model,
)

FORMAT = "cliplab"
VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
META_KEY = "cliplab"


def save_checkpoint(
    model: CLIP,
    path: str | Path,
    *,
    preprocess: PreprocessConfig | None = None,
    extra: dict | None = None,
    card: bool = False,
) -> Path:
    """Write ``model`` in cliplab's format and return the path written.

    ``path`` is a directory (created; files in an existing one other than ours are kept) or, when it
    ends in ``.safetensors``, a single self-describing file. ``preprocess`` defaults to OpenAI's
    preprocessing at the model's input size; ``extra`` is any JSON-serialisable dict (a training
    step, a dataset name...), returned by :func:`read_header`. ``model`` may be wrapped by
    ``DistributedDataParallel`` or ``torch.compile``; the weights saved are the inner model's.
    ``card=True`` adds a README.md model card to a directory (see ``card.py``).
    """
    from safetensors.torch import save_file

    model = unwrap_model(model)
    path = Path(path)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "model": model.config.to_dict(),
        "preprocess": (preprocess or default_preprocess(model.config)).to_dict(),
        "extra": dict(extra or {}),
    }
    try:
        compact = json.dumps(header)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"extra must be JSON-serialisable (strings, numbers, lists, dicts): {exc}"
        ) from None
    weights = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}

    def write_weights(file: Path) -> None:
        save_file(weights, str(file), metadata={META_KEY: compact, "format": "pt"})

    if path.suffix == ".safetensors":
        return atomic_write(path, write_weights)

    preprocess = preprocess or default_preprocess(model.config)
    text = model_card(model, preprocess, "cliplab", extra=extra, run_dir=find_run_dir(path)) if card else None

    def write_dir(tmp: Path) -> None:
        write_weights(tmp / WEIGHTS_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(header, indent=2))
        if text is not None:
            write_card(tmp, text, existing=path / CARD_FILE)

    return atomic_write_dir(path, write_dir)


def is_cliplab(path: Path) -> bool:
    """A cliplab directory, a safetensors file with our header, or the weights file of a cliplab directory."""
    if path.is_dir():
        return _is_cliplab_dir(path)
    meta = safetensors_metadata(path) if path.is_file() else None
    if meta is None:
        return False
    return META_KEY in meta or (path.name == WEIGHTS_FILE and _is_cliplab_dir(path.parent))


def _is_cliplab_dir(path: Path) -> bool:
    try:
        return json.loads((path / CONFIG_FILE).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_header(path: str | Path) -> dict:
    """The JSON header of a cliplab checkpoint (directory or lone ``.safetensors`` file)."""
    path = Path(path)
    meta = {} if path.is_dir() else safetensors_metadata(path) or {}
    if META_KEY in meta:
        try:
            header, source = json.loads(meta[META_KEY]), path
        except ValueError as exc:
            raise CheckpointError(f"{path}: the '{META_KEY}' metadata is not valid JSON ({exc})") from None
    else:
        # a directory, or a weights file written without our metadata: the config.json beside it
        config = path / CONFIG_FILE if path.is_dir() else path.parent / CONFIG_FILE
        if not config.is_file():
            raise CheckpointError(
                f"{path}: no '{META_KEY}' safetensors metadata and no {CONFIG_FILE}; not a cliplab checkpoint"
            )
        header, source = read_json(config), config
    _check_header(header, source)
    return header


def read_cliplab(path: Path) -> Loaded:
    header = read_header(path)
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    if not weights.is_file():
        raise CheckpointError(f"{path}: {CONFIG_FILE} is there but {WEIGHTS_FILE} is missing")
    sd = read_safetensors(weights)[0]
    try:
        config = CLIPConfig.from_dict(header["model"], source=f"{path}: model")
        preprocess = PreprocessConfig.from_dict(
            header.get("preprocess") or {"image_size": config.vision.image_size}
        )
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid configuration in the header ({exc})") from None
    return Loaded(sd, FORMAT, config=config, preprocess=preprocess, extra=header.get("extra") or {})


def _check_header(header: object, source: Path) -> None:
    if not isinstance(header, Mapping) or header.get("format") != FORMAT:
        raise CheckpointError(f'{source}: not a cliplab header (no "format": "{FORMAT}")')
    version = header.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"{source}: cliplab checkpoint version {version!r}; this cliplab reads version {VERSION}. Upgrade cliplab."
        )
    if not isinstance(header.get("model"), Mapping):
        raise CheckpointError(f"{source}: the header has no 'model' config")
