"""Shared by the tests of the CUDA kernels of cuda_kernels/ (tests/test_cuda_kernels_*.py): the
NumPy reference they are checked against (tinysparse/moe/dispatch.py), routings that hit every
edge, and the module-level skip where the kernels have nowhere to run. Not a test module: nothing
here is collected.

Under pytest the kernels run in Numba's CUDA simulator (tests/conftest.py sets
NUMBA_ENABLE_CUDASIM=1), one Python thread per GPU thread, about 150 us each: the shapes are
small, but chosen to hit every edge: empty experts, all slots on one expert, capacity drops,
empty slots (-1) from expert choice, nothing to do at all, and sizes that are not multiples of the
tile or block. With NUMBA_ENABLE_CUDASIM=0 on a machine with a GPU (make gpu-check) the same tests
run on the real device, NumPy arrays copied in and out.
"""
import numpy as np
import pytest

from cuda_kernels import host
from tinysparse.moe.dispatch import NumpyDispatch


def skip_module_without_a_device():
    """Skip the calling test module when the simulator is off (NUMBA_ENABLE_CUDASIM=0) and there
    is no CUDA device: call it at the module's top level, after its imports."""
    if not host.SIMULATED:
        from numba import cuda
        if not cuda.is_available():
            pytest.skip("NUMBA_ENABLE_CUDASIM=0 and no CUDA device: the kernels have nowhere to run",
                        allow_module_level=True)


REF = NumpyDispatch()
TIGHT = dict(rtol=1e-12, atol=1e-12)          # float64: only the order of the sums differs


def routing(pattern, T, k, E, rng):
    """(T, k) expert ids. Top-k routing gives k distinct experts per token; expert choice leaves -1."""
    if pattern == "uniform":
        return np.stack([rng.choice(E, size=k, replace=False) for _ in range(T)])
    if pattern == "skewed":                    # low ids favoured: high experts stay empty
        p = np.exp(-2.0 * np.arange(E))
        return np.stack([rng.choice(E, size=k, replace=False, p=p / p.sum()) for _ in range(T)])
    if pattern == "one_expert":                # every token's first slot on expert E-1
        ids = np.stack([rng.choice(E - 1, size=k, replace=False) for _ in range(T)])
        ids[:, 0] = E - 1
        return ids
    if pattern in ("holes", "skewed_holes"):   # expert choice: some slots empty
        ids = routing(pattern[:-6] or "uniform", T, k, E, rng)
        ids[rng.random((T, k)) < 0.35] = -1
        return ids
    if pattern == "all_empty":
        return np.full((T, k), -1)
    raise ValueError(pattern)


def segments(counts):
    off = np.zeros(len(counts) + 1, dtype=np.int64)
    off[1:] = np.cumsum(counts)
    return off
