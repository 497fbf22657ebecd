"""cuda_kernels/layer_norm.py against functional.LayerNorm's array code (the scaled path, which
a GPU always runs), under the CUDA simulator on NumPy arrays (tests/conftest.py); tests/test_gpu.py
runs them on a real GPU through the Function. Rows: odd widths below, at and above a warp's 32
lanes, row counts that do not fill a block of 8, huge, tiny and constant rows, one huge value among
ordinary ones, NaN and inf; weight and bias each present or not."""
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
    huge = 1e200 if dtype == np.float64 else 1e30         # its square overflows: the scale must act
    if R >= 5:
        x[1] *= huge
        x[2] = 0.1          # constant: normalises to exactly 0 (shifted by x[0]; its plain mean is not 0.1)
        x[3] *= 1e-30
        x[4, 0] = np.inf if R % 2 else np.nan
    # one huge negative value among ordinary ones: the scale is max |x| over every column and lane
    if R >= 6:
        x[5, min(C, 32) - 1] = -huge                         # the last lane's column
    if R >= 7 and C > 32:
        x[6, 32] = -huge                                     # lane 0's second column
    return x.astype(dtype)


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("R, C, params", [(1, 1, "wb"), (5, 7, "w"), (9, 33, ""),
                                          (13, 70, "wb"), (6, 32, "b")])
def test_layer_norm_kernels_match_the_array_code(dtype, rtol, R, C, params):
    rng = np.random.default_rng(R * 100 + C)
    x = _rows(R, C, dtype, rng)
    w = rng.standard_normal(C).astype(dtype) if "w" in params else None
    b = rng.standard_normal(C).astype(dtype) if "b" in params else None
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
    assert dx.dtype == dtype and dx.shape == (R, C)
    np.testing.assert_allclose(dx, ref_dx, rtol=rtol, atol=atol * np.abs(ref_dx[np.isfinite(ref_dx)]).max(initial=1),
                               equal_nan=True)
    finite_rows = np.isfinite(x).all(axis=1)
    assert np.isfinite(out[finite_rows]).all() and np.isfinite(dx[finite_rows]).all()
    if R >= 5:
        assert (xhat[2] == 0).all()                           # the constant row


@pytest.mark.parametrize("R, C", [(0, 5), (3, 0)])
def test_layer_norm_kernels_take_no_rows_or_no_columns(R, C):
    """Nothing to launch for (the Function never sends them: it takes empty arrays to the array
    code; a row without columns has no x[r, 0] to shift by)."""
    out, xhat, rstd = K.layer_norm_forward(np.empty((R, C), np.float32), None, None, 1e-5)
    assert out.shape == xhat.shape == (R, C) and rstd.shape == (R,)
    dx = K.layer_norm_backward_dx(np.empty((R, C), np.float32), xhat, rstd, None)
    assert dx.shape == (R, C)
