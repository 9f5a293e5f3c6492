"""Shared fixtures and options. Test modules opt in with ``pytestmark = pytest.mark.usefixtures(...)``.

``--require-references`` (or the ``CI`` environment variable) turns a missing parity reference
(clip-anytorch, transformers) from a skip into a failure, both for ``reference.require`` /
``load_reference`` calls and for tests marked ``@pytest.mark.requires(module, why)``; see reference.py.
"""

from __future__ import annotations

import pytest
import reference
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--require-references",
        action="store_true",
        help="fail, instead of skip, tests whose reference package (clip-anytorch, transformers) is "
        "missing; on by default when the CI environment variable is set",
    )


def pytest_configure(config: pytest.Config) -> None:
    reference.REQUIRE_FLAG = config.getoption("--require-references")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``@pytest.mark.requires(module, why)``: skip the test when ``module`` is missing, unless required."""
    if reference.references_required():
        return  # pytest_runtest_setup fails them instead
    for item in items:
        for mark in item.iter_markers("requires"):
            if not reference.installed(mark.args[0]):
                item.add_marker(pytest.mark.skip(reason=reference.skip_reason(*mark.args)))


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("requires"):
        if not reference.installed(mark.args[0]):
            reference.missing(*mark.args)


@pytest.fixture
def one_thread():
    """Micro-sized ops run faster on one intra-op thread, and a busy machine's spinning OpenMP
    threads can make two threads many times slower; restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
