"""Run-directory outputs: ``metrics.jsonl``, TensorBoard events, ``summary.json`` and ``report.png``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..fileio import atomic_write_text

logger = logging.getLogger(__name__)


class MetricsLog:
    """Appends one JSON object per logged step or evaluation; mirrors scalars to TensorBoard."""

    def __init__(self, out_dir: Path, tensorboard: bool = True, resume_step: int | None = None):
        self.path = Path(out_dir) / "metrics.jsonl"
        if resume_step is not None:
            self._truncate_after(resume_step)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard"))
            except ImportError:
                logger.warning("tensorboard is not installed; skipping event files (pip install tensorboard)")

    def _truncate_after(self, step: int) -> None:
        """On resume, drop records written after the checkpoint so the log matches an uninterrupted run."""
        if not self.path.exists():
            return
        # A line torn by a kill mid-write has no step and is dropped with the later ones.
        lines = self.path.read_text().splitlines()
        kept = [line for line in lines if (s := _step_of(line)) is not None and s <= step]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def log(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            kind = record.get("kind", "train")
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                    self.writer.add_scalar(f"{kind}/{k}", v, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _step_of(line: str) -> int | None:
    """The step of one metrics line, or None for a blank or torn line."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every record of a ``metrics.jsonl``; a torn last line (the process was killed) is ignored."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def plot_report(metrics_path: Path, out_png: Path, chance: dict[str, float] | None = None) -> Path | None:
    """Loss, learning rate and temperature curves above each zero-shot task's accuracy over training.

    The wide lower panel has one line per evaluation set (dotted: its chance level), labelled with
    the first evaluated step at which it reached 90% of its final accuracy, so the order in which
    concepts are learned can be read off.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed, so no report.png: pip install 'cliplab[train]'")
        return None
    records = read_metrics(metrics_path)
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    fig = plt.figure(figsize=(13, 8.5))
    grid = fig.add_gridspec(2, 3, height_ratios=(1, 1.5))
    panels = [("loss", "contrastive loss"), ("lr", "learning rate"), ("logit_scale", "logit scale exp(t)")]
    for col, (key, title) in enumerate(panels):
        ax = fig.add_subplot(grid[0, col])
        xs = [r["step"] for r in train if key in r]
        ax.plot(xs, [r[key] for r in train if key in r], lw=1.2)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    ax = fig.add_subplot(grid[1, :])
    tasks = list(dict.fromkeys(k[len("zeroshot/") :] for r in evals for k in r if k.startswith("zeroshot/")))
    for task in tasks:
        key = f"zeroshot/{task}"
        xs = [r["step"] for r in evals if key in r]
        ys = [r[key] for r in evals if key in r]
        learned = next((x for x, y in zip(xs, ys, strict=True) if y >= 0.9 * ys[-1]), xs[-1])
        (line,) = ax.plot(
            xs, ys, marker="o", ms=3, lw=1.4, label=f"{task} ({ys[-1]:.0%}; 90% of it by step {learned})"
        )
        if chance and task in chance:
            ax.axhline(chance[task], color=line.get_color(), ls=":", lw=0.8)
    ax.set_title("zero-shot top-1 per task over training (dotted: chance)")
    ax.set_xlabel("step")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if tasks:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
