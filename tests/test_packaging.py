"""What installing cliplab pulls in, what optional extras cost when missing, and that parity tests
cannot vanish silently.

Missing packages are simulated, never uninstalled: ``sys.modules[name] = None`` makes both
``import name`` and ``importlib.util.find_spec(name)`` behave as if it were not installed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import reference
import torch

import cliplab

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself depends on tomli before Python 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]

# Demo data, training and evaluation dependencies: none is needed to embed images and texts.
NOT_IN_CORE = [
    "matplotlib",
    "cliplab.data.synthetic",
    "cliplab.data.synthetic_render",
    "cliplab.training",
    "webdataset",
    "sklearn",
]


def _run(code: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def _hide(monkeypatch, *packages: str) -> None:
    """Make ``packages`` (and any of their submodules already imported) look uninstalled."""
    for name in list(sys.modules):
        if name in packages or name.startswith(tuple(p + "." for p in packages)):
            monkeypatch.setitem(sys.modules, name, None)
    for name in packages:
        monkeypatch.setitem(sys.modules, name, None)


def _requirement_names(requirements: list[str]) -> set[str]:
    return {re.match(r"[A-Za-z0-9_.\-]+", r).group(0).lower() for r in requirements}


# ---------------------------------------------------------------- the core stays small


def test_import_and_load_pull_in_no_demo_training_or_plotting_code(tmp_path):
    path = cliplab.save(cliplab.create_model("micro"), tmp_path / "micro")
    code = (
        "import json, sys\n"
        "import cliplab\n"
        f"model, preprocess = cliplab.load({str(path)!r})\n"
        "model.encode_text(cliplab.tokenize(['a photo of a dog']))\n"
        f"print(json.dumps(sorted(m for m in {NOT_IN_CORE!r} if m in sys.modules)))\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == []


def test_matplotlib_is_not_a_core_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "matplotlib" not in _requirement_names(project["dependencies"])
    extras = project["optional-dependencies"]
    # The synthetic dataset's fonts and the training report come with [train]; confusion PNGs with [eval].
    assert "matplotlib" in _requirement_names(extras["train"])
    assert "matplotlib" in _requirement_names(extras["eval"])


# ---------------------------------------------------------------- optional dependencies missing


def test_training_report_is_skipped_with_a_clear_warning_without_matplotlib(tmp_path, monkeypatch, caplog):
    from cliplab.training.reporting import plot_report

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"kind": "train", "step": 1, "loss": 1.0}) + "\n")
    _hide(monkeypatch, "matplotlib")
    with caplog.at_level(logging.WARNING):
        assert plot_report(metrics, tmp_path / "report.png") is None
    assert not (tmp_path / "report.png").exists()
    assert "pip install 'cliplab[train]'" in caplog.text


def test_confusion_png_without_matplotlib_is_a_usage_error(tmp_path, monkeypatch):
    from cliplab.errors import UsageError
    from cliplab.evaluation.metrics import save_confusion_matrix_png

    _hide(monkeypatch, "matplotlib")
    with pytest.raises(UsageError, match=re.escape("pip install 'cliplab[eval]'")) as err:
        save_confusion_matrix_png(torch.eye(3, dtype=torch.long), ["a", "b", "c"], tmp_path / "cm.png")
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------- parity tests cannot skip silently


@pytest.mark.parametrize(
    "ci, flag, outcome",
    [("", False, "skip"), ("0", False, "skip"), ("true", False, "fail"), ("", True, "fail")],
)
def test_require_skips_locally_and_fails_under_ci_or_flag(monkeypatch, ci, flag, outcome):
    monkeypatch.setenv("CI", ci)
    monkeypatch.setattr(reference, "REQUIRE_FLAG", flag)
    # Caught by hand: a skip escaping this test would skip it instead of failing it.
    with pytest.raises((pytest.skip.Exception, pytest.fail.Exception)) as raised:
        reference.require("cliplab_no_such_package")
    expected = pytest.skip.Exception if outcome == "skip" else pytest.fail.Exception
    assert raised.type is expected, f"require() raised {raised.type.__name__}, expected {outcome}"
    assert "cliplab_no_such_package is " + ("not installed" if outcome == "skip" else "required") in str(
        raised.value
    )
    assert reference.require("json") is json


# One test per guarantee: HF parity, OpenAI model parity, OpenAI tokenizer parity, open_clip layouts.
PARITY_TESTS = [
    "tests/test_parity_hf.py::test_key_mapping_is_a_bijection",
    "tests/test_parity_hf.py::test_parity_every_vit_shape[micro]",
    "tests/test_models.py::test_parity_with_openai_reference[micro]",
    "tests/test_tokenizer.py::test_clean_text_matches_reference_cleaning",
    "tests/test_checkpoints.py::test_open_clip_training_checkpoint",
]


def _pytest_without_references(ci: str | None) -> subprocess.CompletedProcess:
    """Run PARITY_TESTS in a fresh interpreter where clip-anytorch and transformers look uninstalled."""
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    args = ["-p", "no:cacheprovider", *PARITY_TESTS]
    code = (
        "import sys\n"
        "sys.modules['clip'] = sys.modules['transformers'] = None\n"
        "import pytest\n"
        f"sys.exit(pytest.main({args!r}))\n"
    )
    return _run(code, env=env)


def test_missing_references_fail_under_ci():
    proc = _pytest_without_references(ci="true")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert out.count("transformers is required here") >= 2, out
    assert out.count("clip-anytorch is required here") >= 3, out
    assert not re.search(r"\d+ (passed|skipped)", out), out


def test_missing_references_skip_with_reasons_locally():
    proc = _pytest_without_references(ci=None)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert re.search(rf"\b{len(PARITY_TESTS)} skipped", out), out
    # -rfEs in pyproject's addopts: every skip is listed with its reason.
    counts = {"transformers": 0, "clip-anytorch": 0}
    for n, reason in re.findall(r"^SKIPPED \[(\d+)\] (.*)$", out, flags=re.M):
        for package in counts:
            counts[package] += int(n) * (f"{package} is not installed" in reason)
    assert counts == {"transformers": 2, "clip-anytorch": 3}, out
