"""Import OpenAI's reference code from the clip-anytorch wheel by path.

The package's ``clip/__init__.py`` imports torchvision, which does not import beside this machine's
CPU torch, so the two reference files are loaded directly.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest


def _clip_dir() -> Path:
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("clip-anytorch is not installed (make test installs it)")
    return Path(list(spec.submodule_search_locations)[0])


def load_reference(name: str) -> ModuleType:
    """``load_reference("model")`` or ``load_reference("simple_tokenizer")``."""
    path = _clip_dir() / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"openai_clip_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
