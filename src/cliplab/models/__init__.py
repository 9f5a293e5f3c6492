"""CLIP architectures. Imports torch and nothing of training."""

from .clip import CLIP, build_model
from .config import CLIPConfig, TextConfig, VisionConfig, get_config, infer_config, list_configs

__all__ = [
    "CLIP",
    "CLIPConfig",
    "TextConfig",
    "VisionConfig",
    "build_model",
    "get_config",
    "infer_config",
    "list_configs",
]
