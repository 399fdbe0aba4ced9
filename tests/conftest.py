"""Fixtures shared by the test modules."""

import pytest


@pytest.fixture
def torch_one_thread():
    """Run a test with one torch thread.

    The networks in the tests are tiny: many short operations. With several
    threads on a busy machine each one can wait for a descheduled thread,
    which makes the tests ten times slower and erratic.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
