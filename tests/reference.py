"""Reference packages for the parity tests, and OpenAI's reference code loaded by path.

A parity test is a guarantee only if it runs. ``require`` skips a test whose reference package is
missing on a developer's machine, but fails it when references are required: under CI (the ``CI``
environment variable set, as ``make test`` in CI has it) or with ``pytest --require-references``
(which ``make test`` passes, since it installs every reference).

The clip-anytorch package's ``clip/__init__.py`` imports torchvision, which does not import beside
this machine's CPU torch, so the two reference files are loaded directly.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest

# How each reference package is installed; the Makefile's setup target does all of these.
INSTALL = {
    "clip": "pip install --no-deps clip-anytorch==2.6.0",
    "transformers": "pip install -e '.[test]'",
}
DISTRIBUTION = {"clip": "clip-anytorch"}

# Set by conftest.py from --require-references.
REQUIRE_FLAG = False


def references_required() -> bool:
    """True under CI (``CI`` set to anything but empty/0/false/no) or with ``--require-references``."""
    ci = os.environ.get("CI", "").strip().lower()
    return REQUIRE_FLAG or ci not in ("", "0", "false", "no")


def installed(module_name: str) -> bool:
    """Whether ``module_name`` imports (a package that is present but broken counts as missing)."""
    try:
        importlib.import_module(module_name)
    except ImportError:
        return False
    return True


def skip_reason(module_name: str, why: str) -> str:
    package = DISTRIBUTION.get(module_name, module_name)
    install = INSTALL.get(module_name, f"pip install {package}")
    return f"{package} is not installed ({why}); `{install}` (make test does)"


def fail_reason(module_name: str, why: str) -> str:
    package = DISTRIBUTION.get(module_name, module_name)
    install = INSTALL.get(module_name, f"pip install {package}")
    cause = "--require-references is on" if REQUIRE_FLAG else "the CI environment variable is set"
    return (
        f"{package} is required here ({why}; {cause}) but is not installed; install it with `{install}` "
        "(make test does)"
    )


def missing(module_name: str, why: str) -> None:
    """Skip the calling test (or module) locally; fail it where references are required."""
    if references_required():
        pytest.fail(fail_reason(module_name, why), pytrace=False)
    pytest.skip(skip_reason(module_name, why), allow_module_level=True)


def require(module_name: str, why: str = "parity reference") -> ModuleType:
    """Import and return ``module_name``, or skip/fail as :func:`missing` says.

    For use inside a test or fixture. A whole module marks itself instead with
    ``pytestmark = pytest.mark.requires("transformers", why)``, which conftest.py turns into a
    skip (reported at each test) or a failure.
    """
    if not installed(module_name):
        missing(module_name, why)
    return importlib.import_module(module_name)


def _clip_dir() -> Path:
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        missing("clip", "OpenAI's reference model.py and simple_tokenizer.py")
    return Path(list(spec.submodule_search_locations)[0])


def load_reference(name: str) -> ModuleType:
    """``load_reference("model")`` or ``load_reference("simple_tokenizer")``."""
    path = _clip_dir() / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"openai_clip_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
