"""Contrastive training: loss, optimiser and schedule, the step with accumulation, the run loop."""

from .config import TrainConfig, load_config
from .loop import Trainer, TrainingDiverged, train
from .loss import ClipLoss

__all__ = ["ClipLoss", "TrainConfig", "Trainer", "TrainingDiverged", "load_config", "train"]
