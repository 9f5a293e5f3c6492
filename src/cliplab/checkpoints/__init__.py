"""Checkpoint formats: OpenAI's archives and state dicts, open_clip, Hugging Face, and cliplab's own.

One model class, one key layout (OpenAI's); each foreign format is a key-mapping reader in its own
module, and :func:`load_checkpoint` detects which one a file needs. Loading never unpickles
arbitrary Python objects.
"""

from .common import CheckpointError
from .download import available_models, default_cache_dir, download_model
from .hf import from_hf_state_dict, save_hf_checkpoint, to_hf_config, to_hf_state_dict
from .load import FORMATS, detect_format, load_checkpoint
from .native import read_header, save_checkpoint

__all__ = [
    "FORMATS",
    "CheckpointError",
    "available_models",
    "default_cache_dir",
    "detect_format",
    "download_model",
    "from_hf_state_dict",
    "load_checkpoint",
    "read_header",
    "save_checkpoint",
    "save_hf_checkpoint",
    "to_hf_config",
    "to_hf_state_dict",
]
