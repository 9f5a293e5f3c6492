"""Training checkpoints: atomic writes, the last K kept plus the best, and everything exact resume needs.

A checkpoint is a ``torch.save`` dict of tensors and plain Python values only, so it loads with
``weights_only=True``. It holds the model (OpenAI key layout, under ``state_dict`` with its config,
so ``cliplab.load`` reads it too), the optimizer and grad-scaler states, every RNG state and the
data position (epoch, next batch). The learning rate is a pure function of the step, so there is
no scheduler state to save.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UsageError, first_line
from ..fileio import atomic_torch_save, atomic_write, remove_orphans

logger = logging.getLogger(__name__)
CKPT_RE = re.compile(r"^step_(\d+)\.pt$")
# Keys every training checkpoint holds; a model file (final/, cliplab.save) has none of the others.
TRAINING_KEYS = ("state_dict", "optimizer", "rng", "run", "config")


class CheckpointReadError(UsageError):
    """A training checkpoint cannot be read or is not a training checkpoint."""


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": _py_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _py_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


class CheckpointManager:
    """Writes ``checkpoints/step_NNNNNNN.pt``, keeps the newest ``keep_last`` and a copy of the best."""

    def __init__(self, directory: Path, keep_last: int = 2):
        self.directory = Path(directory)
        self.keep_last = keep_last

    def save(self, state: dict[str, Any], step: int, is_best: bool = False) -> Path:
        path = self.directory / f"step_{step:07d}.pt"
        atomic_torch_save(state, path)
        if is_best:
            atomic_write(self.directory / "best.pt", lambda tmp: shutil.copyfile(path, tmp))
        self._prune()
        return path

    def remove_orphans(self) -> None:
        """Delete temporaries of writes a killed process left behind (only this run writes here)."""
        for item in remove_orphans(self.directory):
            logger.warning("removed %s, left by an interrupted checkpoint write", item)

    def load_latest(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that reads back whole; a damaged newer one is skipped with a warning."""
        damaged: list[Path] = []
        for path in reversed(self.list()):
            try:
                ckpt = load_training_checkpoint(path)
            except CheckpointReadError as exc:
                damaged.append(path)
                logger.warning("%s", exc)
                continue
            if damaged:
                logger.warning(
                    "resuming from %s instead of the newer %s, which cannot be read",
                    path.name,
                    ", ".join(p.name for p in damaged),
                )
            return path, ckpt
        if damaged:
            raise CheckpointReadError(
                f"no readable checkpoint in {self.directory}: {', '.join(p.name for p in damaged)} are all "
                "damaged; start again with --overwrite or resume from a copy"
            )
        return None

    def _prune(self) -> None:
        for old in self.list()[: -self.keep_last]:
            old.unlink(missing_ok=True)

    def list(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if CKPT_RE.match(p.name)]
        return sorted(found, key=lambda p: int(CKPT_RE.match(p.name).group(1)))

    def latest(self) -> Path | None:
        found = self.list()
        return found[-1] if found else None


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    """A training checkpoint (weights only, nothing executed), checked to be one."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means the file is unusable
        raise CheckpointReadError(
            f"cannot read training checkpoint {path} ({type(e).__name__}: {first_line(e, 200)}); "
            "if the run was killed while writing, an older checkpoint beside it is intact: pass it to --resume"
        ) from None
    missing = [k for k in TRAINING_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointReadError(
            f"{path} is not a training checkpoint (it lacks {', '.join(missing)}); --resume takes a run "
            "directory or a checkpoints/step_*.pt file. To start a new run from a model's weights, use "
            f"--pretrained={path}"
        )
    return ckpt


def resolve_resume(resume: str, out_dir: Path) -> tuple[Path, dict[str, Any]]:
    """``--resume`` accepts ``latest`` (this run's newest checkpoint), a run directory or a .pt file.

    Returns the checkpoint's path and contents. For a directory, the newest checkpoint that reads
    back whole is used: one truncated by a crash falls back to the previous with a warning.
    """
    target = out_dir if resume == "latest" else Path(resume)
    if target.is_file():
        return target, load_training_checkpoint(target)
    found = CheckpointManager(target / "checkpoints").load_latest() if target.is_dir() else None
    if found is None:
        raise CheckpointReadError(
            f"--resume {resume}: no checkpoints/step_*.pt found under {target}; "
            "pass a run directory or a checkpoint file"
        )
    return found
