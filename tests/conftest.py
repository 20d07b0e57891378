import os

import pytest
import torch

# Tests are sized for 2 CPU cores; one thread per process keeps timings stable when processes run side by side.
THREADS = max(1, min(2, os.cpu_count() or 1))
torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _threads():
    """Benchmarks called in-process set torch's thread count for their runs (bench/compression.py: 1); put it back, so
    one test cannot leave every later test on one core."""
    yield
    if torch.get_num_threads() != THREADS:
        torch.set_num_threads(THREADS)
