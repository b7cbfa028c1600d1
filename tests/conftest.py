"""Shared test setup."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The test machine is shared and small: one intra-op thread is much faster than contended ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
