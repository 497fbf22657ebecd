"""Layer normalisation as one fused Function (Ba, Kiros, Hinton 2016), numerically safe.

Split from functional.py, which re-exports it (F.layer_norm); the same rules hold: the backward
is derived in a comment above it and gradchecked in the tests. The textbook formula fails on
inputs it is perfectly defined for (huge rows, constant rows): the comments say how and why the
code does not.
"""
import math
import numbers

import numpy as np

from .backend import array_module
from .compiled import gpu as gpu_kernels
from .compiled import kernels as compiled_kernels
from .tensor import Function


def _normalize(x, eps, scale=None):
    """(xhat, rstd, var) of the rows (last axis) of x / scale; rstd is that of x itself.

    Shifted data (x - x[..., :1]): the mean of a constant row is then exactly its value, so the
    row normalises to 0. With a plain mean, [c, c, c] whose rounded mean is not c (c = 5.4e17 in
    float32) normalised to [-1, -1, -1]: the mean's rounding error, divided by a std that eps no
    longer props up. `scale` (a power of two per row, exact) keeps (x - mean)^2 from overflowing;
    the scaled rows' std is sqrt(var + eps / scale^2) = hypot(sqrt(var), sqrt(eps) / scale),
    which stays right where eps / scale^2 alone would underflow to 0 (a constant row of 1e159
    in float64 then had std 0). xhat divides by the std rather than multiplying by 1/std, which
    can overflow (float32: sqrt(eps) / scale may be 1e-41).
    """
    xp = array_module(x)
    xs = x if scale is None else x / scale
    C = x.shape[-1]
    d = xs - xs[..., :1]                                 # (..., C)
    centered = d - _row_mean(d, C)
    var = _row_mean(centered * centered, C)
    if scale is None:
        std = xp.sqrt(var + eps)
    else:
        std = xp.hypot(xp.sqrt(var), math.sqrt(eps) / scale)
    centered /= std
    return centered, 1.0 / (std if scale is None else std * scale), var


def _row_mean(x, C):
    """x.mean(axis=-1, keepdims=True), bit for bit (the same sum, then a division by C that
    rounds once, as mean's does), without mean's Python-level bookkeeping: 11 us of a 1 x 128
    row's 13 us, which a sampler pays nine times per token. float32 and float64 only (mean would
    sum float16 in float32; Function.apply hands this Function float32 for it)."""
    m = x.sum(axis=-1, keepdims=True)
    m /= C
    return m


def _row_scale(x):
    """A power of two per row, between max|x| / 2 and max|x| and at least 1 (..., 1): rows
    divided by it hold numbers of magnitude at most 2, whose squares cannot overflow."""
    xp = array_module(x)
    biggest = xp.maximum(x.max(axis=-1, keepdims=True), -x.min(axis=-1, keepdims=True))
    _, exponent = xp.frexp(biggest)
    return xp.ldexp(xp.ones(exponent.shape, x.dtype), xp.maximum(exponent - 1, 0))


def _or_empty(parameter):
    """A compiled loop's stand-in for a missing weight or bias (its flag says not to read it)."""
    return np.empty(0, np.float32) if parameter is None else parameter


def _forward_compiled(kernels, x, weight, bias, eps):
    """(out, xhat, rstd) from row_kernels, or None when a variance overflowed (the caller
    runs the scaled array code, as the plain array code's check would)."""
    C = x.shape[-1]
    dt = x.dtype.type
    out, xhat = np.empty_like(x), np.empty_like(x)
    rstd, var = np.empty(x.shape[:-1] + (1,), x.dtype), np.empty(x.size // C, x.dtype)
    finite = kernels.layer_norm_forward(
        x.reshape(-1, C), _or_empty(weight), _or_empty(bias), weight is not None,
        bias is not None, dt(eps), dt(0), dt(1), dt(C), out.reshape(-1, C), xhat.reshape(-1, C),
        rstd.reshape(-1), var)                                              # (R, C) views
    return (out, xhat, rstd) if finite else None


class LayerNorm(Function):
    # Ba, Kiros, Hinton 2016: y = (x - mean) / sqrt(var + eps) * w + b, over the last axis.
    # With xhat = (x - mean) * rstd and gh = g * w:
    #   dL/dx = rstd * (gh - mean(gh) - xhat * mean(gh * xhat))
    #   dL/dw = sum over rows of g * xhat,   dL/db = sum over rows of g
    # Numerics: (x - mean)^2 overflows float32 once |x - mean| > 1.8e19 (and x - mean itself near
    # 3.4e38), although xhat is an ordinary number there: var was inf, and every output 0 or nan.
    # Such rows are divided by a power of two first (_row_scale, exact), and eps with them (see
    # _normalize), so a constant row of huge numbers still gives 0 and rstd 1/sqrt(eps), not
    # 0 / 0 or an rstd that overflows its gradient. On the CPU the plain computation runs first
    # and the scaled one only when its variance came out inf or nan (a check of one number per
    # row); on a GPU, where that check would wait for the device, the scaled one always runs.
    compiled = True   # the @njit loops of row_kernels.py on NumPy arrays (same bits), and on CuPy
    #                   arrays the @cuda.jit kernels of cuda_kernels/layer_norm.py (to rounding)

    @staticmethod
    def forward(ctx, x, weight, bias, eps=1e-5):
        eps = float(eps)     # a NumPy float64 eps must not promote float32 rows (apply's scalar rule)
        # the loops index weight and bias by channel: (C,) each, or the array code says what is wrong
        fits = all(p is None or p.shape == x.shape[-1:] for p in (weight, bias))
        kernels = (LayerNorm.compiled and x.size and fits
                   and compiled_kernels(".row_kernels", x, weight, bias))
        result = _forward_compiled(kernels, x, weight, bias, eps) if kernels else None
        if result is not None:
            out, xhat, rstd = result
            ctx.save_for_backward(xhat, rstd, weight)
            return out
        gpu = LayerNorm.compiled and x.size and fits and gpu_kernels("cuda_kernels.layer_norm", x,
                                                                     weight, bias)
        if gpu:                                    # one kernel instead of about twenty
            C = x.shape[-1]
            out, xhat, rstd = gpu.layer_norm_forward(x.reshape(-1, C), weight, bias, eps)
            ctx.save_for_backward(xhat.reshape(x.shape), rstd.reshape(x.shape[:-1] + (1,)), weight)
            return out.reshape(x.shape)
        xp = array_module(x)
        var = None
        if xp is np and x.size:
            with np.errstate(over="ignore", invalid="ignore"):   # an overflow is caught below
                xhat, rstd, var = _normalize(x, eps)
        if var is None or not np.isfinite(var).all():
            xhat, rstd, _ = _normalize(x, eps, _row_scale(x) if x.size else None)
        ctx.save_for_backward(xhat, rstd, weight)
        out = xhat
        if weight is not None:
            out = out * weight
        if bias is not None:
            out = out + bias
        return out

    @staticmethod
    def backward(ctx, grad):
        xhat, rstd, weight = ctx.saved
        C = xhat.shape[-1]
        kernels = (LayerNorm.compiled and grad.shape == xhat.shape
                   and compiled_kernels(".row_kernels", grad, xhat, rstd, weight))
        gpu = (not kernels and LayerNorm.compiled and grad.shape == xhat.shape
               and gpu_kernels("cuda_kernels.layer_norm", grad, xhat, rstd, weight))
        rows = tuple(range(grad.ndim - 1))
        want_dw, want_db = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        summed = False
        if kernels:
            dt = grad.dtype.type
            dx = np.empty_like(grad)
            dw, db = np.zeros(C, grad.dtype), np.zeros(C, grad.dtype)
            summed = C > 1 and (want_dw or want_db)          # NumPy sums a lone column pairwise
            kernels.layer_norm_backward(grad.reshape(-1, C), xhat.reshape(-1, C), rstd.reshape(-1),
                                        _or_empty(weight), weight is not None, dt(0), dt(C),
                                        dx.reshape(-1, C), dw, db, summed)         # (R, C) views
        elif gpu:
            R = grad.size // C
            g2, xhat2 = grad.reshape(R, C), xhat.reshape(R, C)                    # (R, C) views
            dx = gpu.layer_norm_backward_dx(g2, xhat2, rstd.reshape(-1), weight).reshape(grad.shape)
            # the sums over all rows as (1, R) @ (R, C) products: cuBLAS, no atomics
            ones = array_module(grad).ones(R, grad.dtype)
            dw = ones @ (g2 * xhat2) if want_dw else None
            db = ones @ g2 if want_db else None
            summed = True
        else:
            gh = grad if weight is None else grad * weight
            dx = rstd * (gh - gh.sum(axis=-1, keepdims=True) / C
                         - xhat * (gh * xhat).sum(axis=-1, keepdims=True) / C)
        if not summed:
            dw = (grad * xhat).sum(axis=rows) if want_dw else None
            db = grad.sum(axis=rows) if want_db else None
        return dx, (dw if want_dw else None), (db if want_db else None)


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    """Normalise x (..., C) over its last axis to mean 0 and variance 1, then scale by weight (C,)
    and shift by bias (C,). eps (>= 0, finite) is added to the variance. Ba et al. 2016."""
    if not (isinstance(eps, numbers.Real) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"layer_norm eps must be a finite number >= 0, got {eps!r}")
    C = x.shape[-1] if len(x.shape) else None
    if C is None or C == 0:
        raise ValueError(f"layer_norm normalises the last axis, which must hold at least one "
                         f"element; got shape {tuple(x.shape)}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != (C,):
            raise ValueError(f"layer_norm {name} has shape {tuple(p.shape)}, expected ({C},) "
                             f"for input of shape {tuple(x.shape)}")
    return LayerNorm.apply(x, weight, bias, eps=eps)
