"""GELU's forward and backward as compiled loops (Numba @njit): a few passes instead of fifteen.

functional.GELU written with NumPy arrays is a chain of whole-array passes: the forward clips,
squares, scales, adds, multiplies (five passes for 2u), takes -|2u| (two), exp, 1 + e, 1 / (.),
the sign mask, a maximum, a product and the output product, each reading and writing the whole
activation (T*B x 4C: 2 MB per layer at the headline config). The backward is fourteen more.
Here the forward is three passes (2u and the clip in one loop, NumPy's exp in place, the rest in
one loop) and the backward one.

Same bits as the array code: every element goes through the same float operations in the same
order, each rounded to the array's dtype (the constants come in already rounded to it, as NumPy
2 rounds a Python float before it meets a float32 array; Numba leaves fastmath off, so there is
no fused multiply-add and no reassociation). The exp stays NumPy's own (its SIMD exp and libm's
may differ in the last bit). Two rewrites are exact: np.clip is the two comparisons below
(NaN passes through both, as it does np.clip), and maximum(e, x >= 0) * r is r where x >= 0
and e * r elsewhere, since 0 < e <= 1 (1 * r is r). tests/test_gelu_kernels.py checks the bits.

Imports nothing of the project (the kernels' rule, docs/ARCHITECTURE.md).
"""
import numpy as np
from numba import njit


@njit(cache=True, error_model="numpy")   # IEEE division (x / 0 = inf), which vectorises
def gelu_two_u(x, xc, t, bound, c_cube, one, c_two_u):
    """xc = clip(x, -bound, bound);  t = -|2u|,  2u = c_two_u * (1 + c_cube * xc^2) * xc.
    All 1-D, one length, one dtype; xc and t are written."""
    for i in range(x.shape[0]):
        c = x[i]
        if c < -bound:
            c = -bound
        elif c > bound:
            c = bound
        two_u = c * c
        two_u = two_u * c_cube
        two_u = two_u + one
        two_u = two_u * c
        two_u = two_u * c_two_u
        xc[i] = c
        t[i] = -abs(two_u)


@njit(cache=True, error_model="numpy")   # IEEE division (x / 0 = inf), which vectorises
def gelu_output(x, xc, e, out, one):
    """out = x * s with s = sigmoid(2u): r = 1 / (1 + e) where xc >= 0, e * r elsewhere."""
    for i in range(x.shape[0]):
        ei = e[i]
        r = one / (one + ei)
        s = r if xc[i] >= 0 else ei * r
        out[i] = x[i] * s


@njit(cache=True, error_model="numpy")   # IEEE division (x / 0 = inf), which vectorises
def gelu_backward(xc, e, grad, out, one, c_square, c_two_u):
    """out = grad * (s + ((c_two_u * xc) * (1 + c_square * xc^2)) * e * r * r), the order of
    functional.GELU.backward's in-place passes, with r and s as in gelu_output."""
    for i in range(xc.shape[0]):
        c = xc[i]
        ei = e[i]
        r = one / (one + ei)
        s = r if c >= 0 else ei * r
        slope = c * c
        slope = slope * c_square
        slope = slope + one
        slope = slope * (c_two_u * c)
        slope = slope * ei
        slope = slope * r
        slope = slope * r
        slope = slope + s
        out[i] = slope * grad[i]
