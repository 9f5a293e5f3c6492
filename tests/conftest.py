"""Shared fixtures. Test modules opt in with ``pytestmark = pytest.mark.usefixtures(...)``."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """Micro-sized ops run faster on one intra-op thread, and a busy machine's spinning OpenMP
    threads can make two threads many times slower; restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
