"""cuda_kernels/gelu.py (GELU on the GPU) against functional.GELU's array code, under the CUDA
simulator on NumPy arrays (tests/conftest.py); tests/test_gpu.py runs them on a real GPU through
the Function. Inputs: odd lengths, both tails, the clip's edges, zeros of both signs, non-finite
values, and the empty array."""
import numpy as np
import pytest

import tinysparse as ts
from cuda_kernels import gelu as K
from tinysparse.engine import compiled
from tinysparse.engine import functional as F

SPECIAL = [0.0, -0.0, 29.9, 30.0, 30.1, -30.0, -31.0, 40.0, -40.0, 1e20, -1e20, 5e-39,
           np.nan, np.inf, -np.inf]
CONSTANTS = (F._GELU_SATURATED, F._GELU_CUBIC, 2.0 * F._SQRT_2_OVER_PI)


def _array_code(x, g):
    """(gelu(x), dL/dx for upstream g) from the array code."""
    saved = F.GELU.compiled
    F.GELU.compiled = False
    try:
        t = ts.Tensor(x, requires_grad=True)
        y = F.gelu(t)
        (y * ts.Tensor(g)).sum().backward()
        return y.data, t.grad
    finally:
        F.GELU.compiled = saved


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 2e-6), (np.float64, 1e-14)])
@pytest.mark.parametrize("n", [1, 37, 70])
def test_gelu_kernels_match_the_array_code(dtype, rtol, n):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 4).astype(dtype)
    if n >= len(SPECIAL):
        x[:len(SPECIAL)] = SPECIAL
    g = rng.standard_normal(n).astype(dtype)
    ref_y, ref_dx = _array_code(x, g)
    y, xc, e = K.gelu_forward(x, *CONSTANTS)
    assert y.dtype == xc.dtype == e.dtype == dtype and y.shape == (n,)
    np.testing.assert_allclose(y, ref_y, rtol=rtol, atol=0, equal_nan=True)
    np.testing.assert_array_equal(xc, np.clip(x, -30, 30))
    dx = K.gelu_backward(xc, e, g, 3 * F._GELU_CUBIC, CONSTANTS[2])
    assert dx.dtype == dtype and dx.shape == (n,)
    np.testing.assert_allclose(dx, ref_dx, rtol=rtol, atol=0, equal_nan=True)
    finite = np.isfinite(x)
    assert np.isfinite(y[finite]).all() and np.isfinite(dx[finite]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_kernels_over_several_blocks(dtype):
    """threads=16 on 37 elements: three blocks, the last with 11 threads past the end, which must
    write nothing. Every element is computed alone, so one block or three give the same bits (the
    test above checks the one-block launch against the array code: lengths there stay below 256,
    one block)."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(37) * 4).astype(dtype)
    x[:len(SPECIAL)] = SPECIAL
    g = rng.standard_normal(37).astype(dtype)
    one_block = K.gelu_forward(x, *CONSTANTS)
    for got, want in zip(K.gelu_forward(x, *CONSTANTS, threads=16), one_block):
        np.testing.assert_array_equal(got, want)
    _, xc, e = one_block
    dx = K.gelu_backward(xc, e, g, 3 * F._GELU_CUBIC, CONSTANTS[2], threads=16)
    np.testing.assert_array_equal(dx, K.gelu_backward(xc, e, g, 3 * F._GELU_CUBIC, CONSTANTS[2]))


def test_gelu_kernels_take_the_empty_array():
    y, xc, e = K.gelu_forward(np.empty(0, np.float32), *CONSTANTS)
    assert y.shape == xc.shape == e.shape == (0,) and y.dtype == np.float32
    assert K.gelu_backward(xc, e, np.empty(0, np.float32), 0.1, 1.6).shape == (0,)


def test_the_engine_sends_only_cupy_arrays_on_a_real_gpu_to_the_kernels():
    """compiled.gpu: NumPy arrays, other dtypes and the simulator all run the array code."""
    x = np.ones(4, np.float32)
    assert compiled.gpu("cuda_kernels.gelu", x) is None                 # NumPy
    assert compiled.gpu("cuda_kernels.gelu", x.astype(np.float16)) is None


def test_the_engine_gates_on_the_simulator(monkeypatch):
    """A CuPy-typed, contiguous float32 array passes the array checks; under the simulator
    (these tests) the kernels are still not taken, so the fake GPU runs the array code."""
    class FakeCupyArray:
        __module__ = "cupy._core.core"
        dtype = np.dtype(np.float32)

        class flags:
            c_contiguous = True
    from cuda_kernels import host
    assert host.SIMULATED
    assert compiled.gpu("cuda_kernels.gelu", FakeCupyArray()) is None
    monkeypatch.setattr(host, "SIMULATED", False)
    monkeypatch.setattr(host, "compile_problem", lambda: None)
    assert compiled.gpu("cuda_kernels.gelu", FakeCupyArray()) is K       # a real GPU's path
    monkeypatch.setattr(host, "compile_problem", lambda: "numba-cuda cannot compile")
    assert compiled.gpu("cuda_kernels.gelu", FakeCupyArray()) is None
