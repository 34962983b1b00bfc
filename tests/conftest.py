"""Fixtures shared by every test folder."""
import pytest


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module: tiny models on a shared 2-core machine run several times faster than
    with two contending threads. Restores the previous setting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
