"""Root of the test tree: one folder per rklu subpackage (tests/kernels, tests/methods, tests/training, ...).

A few helper modules that are not tests (tiny models and tokenizers, the TOFU reference port, shared checks) are
imported by name from more than one folder. pytest puts only the folder of the module it is importing on
``sys.path``, so running one folder alone would not find a helper that lives in another; every test folder is
appended here (after pytest's own entries, so a folder's own modules still win)."""
import sys
from pathlib import Path

import pytest

for _folder in sorted(Path(__file__).parent.iterdir()):
    if _folder.is_dir() and not _folder.name.startswith((".", "_")) and str(_folder) not in sys.path:
        sys.path.append(str(_folder))


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
