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
    """Loss, learning rate, temperature and zero-shot accuracy curves on one page."""
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
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    panels = [("loss", "contrastive loss"), ("lr", "learning rate"), ("logit_scale", "logit scale exp(t)")]
    for ax, (key, title) in zip(axes.flat, panels, strict=False):
        xs = [r["step"] for r in train if key in r]
        ax.plot(xs, [r[key] for r in train if key in r], lw=1.2)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    ax = axes.flat[3]
    tasks = sorted({k[len("zeroshot/") :] for r in evals for k in r if k.startswith("zeroshot/")})
    for task in tasks:
        key = f"zeroshot/{task}"
        xs = [r["step"] for r in evals if key in r]
        (line,) = ax.plot(xs, [r[key] for r in evals if key in r], marker="o", ms=3, label=task)
        if chance and task in chance:
            ax.axhline(chance[task], color=line.get_color(), ls=":", lw=0.8)
    ax.set_title("zero-shot top-1 (dotted: chance)")
    ax.set_xlabel("step")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if tasks:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
