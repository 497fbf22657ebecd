"""cuda_kernels/layer_norm.py against functional.LayerNorm's array code (the scaled path, which
a GPU always runs), under the CUDA simulator on NumPy arrays (tests/conftest.py); tests/test_gpu.py
runs them on a real GPU through the Function. Rows: odd widths below, at and above a warp's 32
lanes, row counts that do not fill a block of 8, huge, tiny and constant rows, NaN and inf."""
import numpy as np
import pytest

import tinysparse as ts
from cuda_kernels import layer_norm as K
from tinysparse.engine import functional as F
from tinysparse.engine import normalization as N


def _array_code_scaled(x, w, b, eps, g):
    """(out, xhat, rstd, dx) of the array code's scaled path, as CuPy arrays take it."""
    xhat, rstd, _ = N._normalize(x, eps, N._row_scale(x))
    out = xhat * (1 if w is None else w) + (0 if b is None else b)
    gh = g if w is None else g * w
    C = x.shape[-1]
    dx = rstd * (gh - gh.sum(axis=-1, keepdims=True) / C
                 - xhat * (gh * xhat).sum(axis=-1, keepdims=True) / C)
    return out, xhat, rstd[..., 0], dx


def _rows(R, C, dtype, rng):
    x = rng.standard_normal((R, C)) * 3 + 1
    if R >= 5:
        x[1] *= 1e30 if dtype == np.float64 else 1e18       # (x - mean)^2 would overflow
        x[2] = 7.25                                           # constant: normalises to 0
        x[3] *= 1e-30
        x[4, 0] = np.inf if R % 2 else np.nan
    return x.astype(dtype)


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("R, C, affine", [(1, 1, True), (5, 7, True), (9, 33, False),
                                          (13, 70, True), (6, 32, False)])
def test_layer_norm_kernels_match_the_array_code(dtype, rtol, R, C, affine):
    rng = np.random.default_rng(R * 100 + C)
    x = _rows(R, C, dtype, rng)
    w = rng.standard_normal(C).astype(dtype) if affine else None
    b = rng.standard_normal(C).astype(dtype) if affine else None
    g = rng.standard_normal((R, C)).astype(dtype)
    eps = 1e-5
    with np.errstate(all="ignore"):
        ref_out, ref_xhat, ref_rstd, ref_dx = _array_code_scaled(x, w, b, eps, g)
    out, xhat, rstd = K.layer_norm_forward(x, w, b, eps)
    assert out.dtype == xhat.dtype == rstd.dtype == dtype and rstd.shape == (R,)
    atol = rtol * 10      # values near 0 after a subtraction: an absolute floor, still far below 1
    np.testing.assert_allclose(xhat, ref_xhat, rtol=rtol, atol=atol, equal_nan=True)
    np.testing.assert_allclose(out, ref_out, rtol=rtol, atol=atol, equal_nan=True)
    np.testing.assert_allclose(rstd, ref_rstd, rtol=rtol, atol=0, equal_nan=True)
    dx = K.layer_norm_backward_dx(g, xhat, rstd, w)
    np.testing.assert_allclose(dx, ref_dx, rtol=rtol, atol=atol * np.abs(ref_dx[np.isfinite(ref_dx)]).max(initial=1),
                               equal_nan=True)
    finite_rows = np.isfinite(x).all(axis=1)
    assert np.isfinite(out[finite_rows]).all() and np.isfinite(dx[finite_rows]).all()
    if R >= 5:
        assert (xhat[2] == 0).all()                           # the constant row


def test_layer_norm_kernels_take_no_rows():
    out, xhat, rstd = K.layer_norm_forward(np.empty((0, 5), np.float32), None, None, 1e-5)
    assert out.shape == xhat.shape == (0, 5) and rstd.shape == (0,)
    dx = K.layer_norm_backward_dx(np.empty((0, 5), np.float32), xhat, rstd, None)
    assert dx.shape == (0, 5)
