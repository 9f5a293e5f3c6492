"""Training checkpoints: atomic writes, the last K kept plus the best, and everything exact resume needs.

A checkpoint is a ``torch.save`` dict of tensors and plain Python values only, so it loads with
``weights_only=True``. It holds the model (OpenAI key layout, under ``state_dict`` with its config,
so ``cliplab.load`` reads it too), the optimizer and grad-scaler states, every RNG state and the
data position (epoch, next batch). The learning rate is a pure function of the step, so there is
no scheduler state to save.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

CKPT_RE = re.compile(r"^step_(\d+)\.pt$")


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write to a temporary file in the same directory, flush to disk, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
            tmp = self.directory / ".best.pt.tmp"
            shutil.copyfile(path, tmp)
            os.replace(tmp, self.directory / "best.pt")
        self._prune()
        return path

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
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure here means the file is unusable
        raise ValueError(
            f"cannot read training checkpoint {path}: {e}. If the run was killed while writing, "
            "an older checkpoint in the same directory is intact: pass it with --resume."
        ) from e


def resolve_resume(resume: str, out_dir: Path) -> Path:
    """``--resume`` accepts ``latest`` (this run's newest checkpoint), a run directory or a .pt file."""
    target = out_dir if resume == "latest" else Path(resume)
    if target.is_file():
        return target
    latest = CheckpointManager(target / "checkpoints").latest() if target.is_dir() else None
    if latest is None:
        raise FileNotFoundError(f"--resume {resume}: no checkpoints/step_*.pt found under {target}")
    return latest
