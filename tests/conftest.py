"""Test-wide setup.

The CUDA kernels in cuda_kernels/ run on the CPU under Numba's CUDA simulator. The switch must be
set before numba is first imported anywhere, so it is set here, at the very top of collection.
"""
import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    """A fresh, fixed-seed generator for each test: same inputs every run."""
    return np.random.default_rng(1234)
