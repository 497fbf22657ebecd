"""Layer norm forward and its input gradient on the GPU: one kernel each, a block per 8 rows.

normalization.LayerNorm's array code (F.layer_norm) on CuPy is about twenty whole-array kernels
forward (on a GPU it always runs the overflow-safe scaled path, normalization._normalize) and a
dozen backward.
Measured on a lent H200, the small preset's 13 layer norms took 7.1 ms forward and 14.1 ms
backward of a 119 ms step (profile synchronised per Function); with these kernels, 6.2 and 6.4
ms. The forward gained little: a Numba launch from Python costs 0.34 ms there, and the kernel
takes about that in all; the backward gained most from its weight and bias sums, which CuPy's
sum over rows took 0.18 ms each for and a (1, R) @ (R, C) product on cuBLAS 0.04 ms. Here a
row is read a few times from cache and written once, with the array code's numerics (Ba, Kiros,
Hinton 2016):

    scale = the power of two between max|x|/2 and max|x|, at least 1 (normalization._row_scale)
    d = x / scale - x[0] / scale,  centered = d - mean(d),  var = mean(centered^2)
    std = hypot(sqrt(var), sqrt(eps) / scale),  xhat = centered / std,  rstd = 1 / (std * scale)
    out = xhat * weight + bias
    dx = rstd * ((gh - mean(gh)) - xhat * mean(gh * xhat)),  gh = grad * weight

Geometry (host.launch_rows): block = (lanes, rows); threadIdx.y picks the row, the lanes stride
over its columns (coalesced), each lane sums its columns in order, and every thread then adds
the lanes' partial sums from shared memory in lane order: a fixed order, so the same bits on
every run (no atomics), though not NumPy's pairwise order: the results match the array code to
rounding. Every thread reaches every barrier, rows past the end included. dweight and dbias (sums
over all rows) are (1, R) @ (R, C) products on cuBLAS in normalization.LayerNorm.backward.
"""
import functools
import math

import numpy as np
from numba import cuda, from_dtype

from .host import Outputs, device_view, launch_rows

LANES, ROWS = 32, 8        # the block, compile-time: the shared partial sums are (ROWS, LANES)


@functools.lru_cache(maxsize=None)
def kernels(dtype):
    """(forward, backward_dx) kernels for one element type."""
    acc = from_dtype(np.dtype(dtype))

    @cuda.jit(device=True)
    def lane_total(part, ty, lanes, zero):
        """The sum of row ty's partials, lane 0 first (the same order for every thread)."""
        total = zero
        for lane in range(lanes):
            total += part[ty, lane]
        return total

    @cuda.jit
    def forward(x, weight, bias, use_weight, use_bias, sqrt_eps, zero, one, count, out, xhat, rstd):
        """Row kernel: x (R, C) -> out, xhat (R, C) and rstd (R,). weight, bias (C,) are read only
        when their flag is set; sqrt_eps, zero, one and count (C) come in x's dtype."""
        tx, ty, lanes = cuda.threadIdx.x, cuda.threadIdx.y, cuda.blockDim.x
        r = cuda.blockIdx.x * cuda.blockDim.y + ty
        active = r < x.shape[0]
        C = x.shape[1]
        part = cuda.shared.array((ROWS, LANES), acc)
        # max |x| of the row (NaN wins, as in np.max), then its power-of-two scale
        m = zero
        if active:
            for j in range(tx, C, lanes):
                v = abs(x[r, j])
                if v > m or v != v:
                    m = v
        part[ty, tx] = m
        cuda.syncthreads()
        biggest = zero
        for lane in range(lanes):
            v = part[ty, lane]
            if v > biggest or v != v:
                biggest = v
        cuda.syncthreads()
        scale = one
        if biggest - biggest == zero:            # finite: NaN and inf rows keep scale 1
            while scale + scale <= biggest:
                scale = scale + scale
        first = x[r, 0] / scale if active else zero
        # mean of the shifted row
        s = zero
        if active:
            for j in range(tx, C, lanes):
                s += x[r, j] / scale - first
        part[ty, tx] = s
        cuda.syncthreads()
        mean = lane_total(part, ty, lanes, zero) / count
        cuda.syncthreads()
        # variance
        s = zero
        if active:
            for j in range(tx, C, lanes):
                c = (x[r, j] / scale - first) - mean
                s += c * c
        part[ty, tx] = s
        cuda.syncthreads()
        var = lane_total(part, ty, lanes, zero) / count
        if not active:
            return                               # past every barrier: spare rows may leave
        std = math.hypot(math.sqrt(var), sqrt_eps / scale)
        if tx == 0:
            rstd[r] = one / (std * scale)
        for j in range(tx, C, lanes):
            h = ((x[r, j] / scale - first) - mean) / std
            xhat[r, j] = h
            if use_weight:
                h = h * weight[j]
            if use_bias:
                h = h + bias[j]
            out[r, j] = h

    @cuda.jit
    def backward_dx(grad, xhat, rstd, weight, use_weight, zero, count, dx):
        """Row kernel: grad, xhat (R, C), rstd (R,) -> dx (R, C); weight (C,) read when
        use_weight; zero and count (C) in grad's dtype."""
        tx, ty, lanes = cuda.threadIdx.x, cuda.threadIdx.y, cuda.blockDim.x
        r = cuda.blockIdx.x * cuda.blockDim.y + ty
        active = r < grad.shape[0]
        C = grad.shape[1]
        part_gh = cuda.shared.array((ROWS, LANES), acc)
        part_dot = cuda.shared.array((ROWS, LANES), acc)
        s_gh, s_dot = zero, zero
        if active:
            for j in range(tx, C, lanes):
                g = grad[r, j] * weight[j] if use_weight else grad[r, j]
                s_gh += g
                s_dot += g * xhat[r, j]
        part_gh[ty, tx] = s_gh
        part_dot[ty, tx] = s_dot
        cuda.syncthreads()
        mean_gh = lane_total(part_gh, ty, lanes, zero) / count
        dot = lane_total(part_dot, ty, lanes, zero)
        if not active:
            return
        scale = rstd[r]
        for j in range(tx, C, lanes):
            g = grad[r, j] * weight[j] if use_weight else grad[r, j]
            dx[r, j] = scale * ((g - mean_gh) - xhat[r, j] * dot / count)

    return forward, backward_dx


def _geometry(R, C):
    return launch_rows(R, C, col_threads=LANES, rows_per_block=ROWS)


def _parameter(p, like):
    """A kernel's stand-in for a missing weight or bias (its flag says not to read it)."""
    return p if p is not None else Outputs(like=like).empty((1,), like.dtype)


def layer_norm_forward(x, weight, bias, eps):
    """x (R, C), weight and bias (C,) or None, one float dtype, CuPy (zero-copy) or NumPy
    (copied) -> (out (R, C), xhat (R, C), rstd (R,)), x's type."""
    R, C = x.shape
    dt = x.dtype.type
    outs = Outputs(like=x)
    d_out, d_xhat = outs.empty((R, C), x.dtype), outs.empty((R, C), x.dtype)
    d_rstd = outs.empty((R,), x.dtype)
    if R and C:
        forward, _ = kernels(x.dtype)
        grid, block = _geometry(R, C)
        forward[grid, block](device_view(x), device_view(_parameter(weight, x)),
                             device_view(_parameter(bias, x)), weight is not None, bias is not None,
                             dt(np.sqrt(eps)), dt(0), dt(1), dt(C), d_out, d_xhat, d_rstd)
    return outs.back(d_out), outs.back(d_xhat), outs.back(d_rstd)


def layer_norm_backward_dx(grad, xhat, rstd, weight):
    """grad, xhat (R, C), rstd (R,), weight (C,) or None -> dL/dx (R, C), grad's type."""
    R, C = grad.shape
    dt = grad.dtype.type
    outs = Outputs(like=grad)
    d_dx = outs.empty((R, C), grad.dtype)
    if R and C:
        _, backward_dx = kernels(grad.dtype)
        grid, block = _geometry(R, C)
        backward_dx[grid, block](device_view(grad), device_view(xhat), device_view(rstd),
                                 device_view(_parameter(weight, grad)), weight is not None, dt(0),
                                 dt(C), d_dx)
    return outs.back(d_dx)
