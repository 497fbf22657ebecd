"""GELU forward and backward on the GPU: one pass each, instead of CuPy's chain of whole-array ops.

On a GPU, functional.GELU's array code is about fifteen CuPy kernels forward and fourteen
backward, each reading and writing the whole activation (B*T x 4C floats). Measured on a lent
H200, the small preset's six GELUs took 11.9 ms forward and 11.2 ms backward of a 119 ms step
(profile synchronised per Function); with these kernels, 2.3 and 2.5 ms, most of it the cost of
launching a Numba kernel from Python (0.34 ms a launch there, on one element as on 25 million).
Each kernel here reads x (and the gradient) once and writes its outputs once: one thread per
element, i = blockIdx.x * blockDim.x + threadIdx.x, with tinysparse/engine/gelu_kernels.py's
formulas (the @njit loops of the CPU) line for line:

    xc = clip(x, -bound, bound),  2u = c_two_u * (1 + c_cube * xc^2) * xc,  e = exp(-|2u|)
    r = 1 / (1 + e),  s = sigmoid(2u) = r where xc >= 0, else e * r,  gelu(x) = x * s
    gelu'(x) = s + (c_two_u * xc) * (1 + c_square * xc^2) * e * r * r

(Hendrycks & Gimpel 2016, the tanh form; functional.GELU derives it.) The forward writes xc and e
as the array code saves them, so the backward of either version reads the other's. Results match
the array code to rounding (the GPU's exp is not NumPy's), which tests/test_cuda_gelu.py and,
on a GPU, tests/test_gpu.py check.
"""
import math

from numba import cuda

from .host import Outputs, device_view, launch_1d


@cuda.jit
def gelu_forward_kernel(x, xc, e, out, bound, c_cube, one, c_two_u):
    """One thread per element of the 1-D arrays: xc, e (= exp(-|2u|)) and out = gelu(x)."""
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if i >= x.shape[0]:
        return
    c = x[i]
    if c < -bound:                      # np.clip's values; NaN passes both tests, as in np.clip
        c = -bound
    elif c > bound:
        c = bound
    two_u = c * c
    two_u = two_u * c_cube
    two_u = two_u + one
    two_u = two_u * c
    two_u = two_u * c_two_u
    ei = math.exp(-abs(two_u))
    r = one / (one + ei)
    s = r if c >= 0 else ei * r
    xc[i] = c
    e[i] = ei
    out[i] = x[i] * s


@cuda.jit
def gelu_backward_kernel(xc, e, grad, out, one, c_square, c_two_u):
    """One thread per element: out = grad * gelu'(x), from the saved xc and e."""
    i = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    if i >= xc.shape[0]:
        return
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


def gelu_forward(x, bound, c_cube, c_two_u, threads=256):
    """x: 1-D float32 or float64 (CuPy: zero-copy; NumPy: copied) -> (out, xc, e), x's type and
    dtype, each x's length. The constants are rounded to x's dtype here."""
    n, dt = x.shape[0], x.dtype.type
    outs = Outputs(like=x)
    d_out, d_xc, d_e = (outs.empty((n,), x.dtype) for _ in range(3))
    if n:
        grid, block = launch_1d(n, threads)
        gelu_forward_kernel[grid, block](device_view(x), d_xc, d_e, d_out, dt(bound), dt(c_cube),
                                         dt(1.0), dt(c_two_u))
    return outs.back(d_out), outs.back(d_xc), outs.back(d_e)


def gelu_backward(xc, e, grad, c_square, c_two_u, threads=256):
    """xc, e (gelu_forward's), grad: 1-D, one length and dtype -> grad * gelu'(x), their type."""
    n, dt = xc.shape[0], xc.dtype.type
    outs = Outputs(like=xc)
    d_out = outs.empty((n,), xc.dtype)
    if n:
        grid, block = launch_1d(n, threads)
        gelu_backward_kernel[grid, block](device_view(xc), device_view(e), device_view(grad),
                                          d_out, dt(1.0), dt(c_square), dt(c_two_u))
    return outs.back(d_out)
