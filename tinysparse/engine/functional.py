"""Neural-network functions. The hot ones are fused: one Function with a hand-written backward.

Fusing matters twice over in an autograd engine written in Python: it replaces a chain of small
Functions (each an allocation, a graph node and a Python call) by one, and the hand-derived
backward is usually cheaper than the chain rule through every intermediate. Each backward is
derived in a comment above it and gradchecked in the tests.

Numerics: every function here is finite wherever its mathematics is, in float32 and float64
(float16 is computed in float32 by Function.apply). softmax divides by a sum that is at least 1;
GELU is written with a sigmoid that is exact in both tails. `axis=` and `dim=` name the same
argument. Layer norm (normalization.py), attention (attention.py) and linear (linear.py) live in
files of their own and are re-exported here: F.layer_norm, F.attention, F.linear.
"""
import contextlib
import math
import numbers

import numpy as np

from .compiled import gpu as gpu_kernels
from .compiled import kernels as compiled_kernels
from . import random as ts_random
from .attention import Attention, PackedCausalAttention, attention, causal_self_attention  # noqa: F401
from .normalization import LayerNorm, layer_norm  # noqa: F401
from .linear import Linear, linear  # noqa: F401
from .backend import array_module
from .backend import to_numpy as backend_to_numpy
from .ops_unary import sigmoid_from_parts, sigmoid_parts
from .ops_reduce import sum_divided
from .spelling import axis_argument
from .tensor import Function, Tensor


def _quiet_overflow(xp):
    """x - max(x) overflows to -inf where a logit is more than the dtype's range below the largest:
    exp(-inf) = 0 is then the right probability. Silence NumPy's warning for that one step."""
    return np.errstate(over="ignore") if xp is np else contextlib.nullcontext()


def _shifted(x, axis):
    """x - max(x) along axis: every entry <= 0 and one of them 0, so sum(exp) lies in [1, n]."""
    xp = array_module(x)
    with _quiet_overflow(xp):
        return x - x.max(axis=axis, keepdims=True)


def _stable_softmax(x, axis):
    e = array_module(x).exp(_shifted(x, axis))      # exp of a large logit would overflow
    return e / e.sum(axis=axis, keepdims=True)


# ---- softmax and log-softmax ---------------------------------------------------------------------

class Softmax(Function):
    # y = softmax(x):  dL/dx = y * (g - sum(g * y))
    @staticmethod
    def forward(ctx, x, axis=-1):
        y = _stable_softmax(x, axis) if x.size else x.copy()
        ctx.save_for_backward(y)
        ctx.axis = axis
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved
        return y * (grad - (grad * y).sum(axis=ctx.axis, keepdims=True))


def softmax(x, axis=None, *, dim=None):
    """exp(x) / sum(exp(x)) along `axis` (or `dim`; the last by default)."""
    return Softmax.apply(x, axis=axis_argument(axis, dim, default=-1))


class LogSoftmax(Function):
    # y = x - logsumexp(x):  dL/dx = g - softmax(x) * sum(g)
    @staticmethod
    def forward(ctx, x, axis=-1):
        xp = array_module(x)
        if x.size == 0:
            y = x.copy()
        else:
            shifted = _shifted(x, axis)
            y = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))
        ctx.save_for_backward(y)
        ctx.axis = axis
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved
        return grad - array_module(y).exp(y) * grad.sum(axis=ctx.axis, keepdims=True)


def log_softmax(x, axis=None, *, dim=None):
    """x - log(sum(exp(x))) along `axis` (or `dim`; the last by default)."""
    return LogSoftmax.apply(x, axis=axis_argument(axis, dim, default=-1))


# ---- cross-entropy -------------------------------------------------------------------------------

class CrossEntropy(Function):
    # L = mean over counted rows of  -log softmax(z)[target]
    # dL/dz = (softmax(z) - onehot(target)) / n_counted   for counted rows, 0 for ignored rows
    @staticmethod
    def forward(ctx, logits, targets, ignore_index=None):
        xp = array_module(logits)
        V = logits.shape[-1]
        z = logits.reshape(-1, V)                      # (N, V)
        t = targets.reshape(-1)                        # (N,)
        keep = None if ignore_index is None else (t != ignore_index)
        if keep is not None:
            t = xp.where(keep, t, 0)                   # any valid index; those rows are masked
        rows = xp.arange(z.shape[0])
        shifted = _shifted(z, 1) if z.size else z
        sum_exp = xp.exp(shifted).sum(axis=1)
        nll = xp.log(sum_exp) - shifted[rows, t]       # (N,)
        if keep is None:
            count = z.shape[0]
        elif xp is np:
            count = max(int(keep.sum()), 1)
        else:                                          # a device scalar: reading it would wait
            count = xp.maximum(keep.sum(), 1).astype(logits.dtype)
        if keep is not None:                           # not nll * keep: an ignored row's nll may
            nll = xp.where(keep, nll, 0.0)             # be inf (its stand-in target 0 far below)
        ctx.save_for_backward(shifted, sum_exp, t, keep)
        ctx.shape, ctx.count = logits.shape, max(count, 1) if keep is None else count
        return xp.asarray(sum_divided(nll, ctx.count), dtype=logits.dtype)   # the mean, safely

    @staticmethod
    def backward(ctx, grad):
        shifted, sum_exp, t, keep = ctx.saved
        xp = array_module(shifted)
        dz = xp.exp(shifted) / sum_exp[:, None]        # softmax, rebuilt (N, V)
        dz[xp.arange(dz.shape[0]), t] -= 1.0
        if keep is not None:
            dz *= keep[:, None]
        dz *= grad / ctx.count
        return dz.reshape(ctx.shape), None


def cross_entropy(logits, targets, ignore_index=None):
    """Mean negative log-likelihood of integer `targets` (...) under `logits` (..., V).

    Every target must be a class index in [0, V), or equal `ignore_index` (any integer, e.g.
    PyTorch's -100 or nanoGPT's -1): such rows count neither in the loss nor in the mean, and get
    a zero gradient. A negative target without ignore_index is an error, not NumPy's "count from
    the end". With no counted row the loss is 0 (not nan) and every gradient is 0.
    Raises TypeError for non-integer targets, ValueError for a target out of range or targets
    whose number does not match the rows of logits.
    """
    data = logits.data if isinstance(logits, Tensor) else logits
    targets = targets.data if isinstance(targets, Tensor) else targets
    targets = np.asarray(targets) if not hasattr(targets, "dtype") else targets
    if targets.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy targets must be integer class indices, got dtype "
                        f"{targets.dtype}: convert them with .astype(np.int64)")
    if ignore_index is not None and (isinstance(ignore_index, bool)
                                     or not isinstance(ignore_index, numbers.Integral)):
        raise TypeError(f"ignore_index must be an integer, got {ignore_index!r}")
    V = data.shape[-1] if data.ndim else 0
    if V == 0:
        raise ValueError(f"cross_entropy needs logits of shape (..., V) with V >= 1 classes, "
                         f"got shape {data.shape}")
    if targets.size * V != data.size:
        raise ValueError(f"cross_entropy: {targets.size} targets for logits of shape {data.shape}: "
                         f"give one target per row, targets of shape {data.shape[:-1]}")
    _check_targets(targets, V, ignore_index)       # on the host when targets are host arrays
    targets = array_module(data).asarray(targets).astype(np.int64, copy=False)  # index dtype
    return CrossEntropy.apply(logits, targets, ignore_index=ignore_index)


def ids_fit_dtype(dtype, n):
    """True when every value of an integer dtype lies in [0, n): ids of that dtype need no check
    (uint8 batches of a 256-byte vocabulary). A check of device data waits for the device."""
    # unsigned of k bytes: [0, 2^(8k)); signed ones hold negatives (np.iinfo says the same, in 4 us)
    return dtype.kind == "u" and 2 ** (8 * dtype.itemsize) <= n


def _check_targets(targets, V, ignore_index):
    """Refuse a target outside [0, V) that is not ignore_index, naming it and where it is."""
    if ids_fit_dtype(targets.dtype, V):
        return
    bad = (targets < 0) | (targets >= V)
    if ignore_index is not None:
        bad &= targets != ignore_index
    if bool(bad.any()):
        where = tuple(int(i) for i in np.argwhere(np.asarray(backend_to_numpy(bad)))[0])
        value = int(backend_to_numpy(targets[where]))
        hint = (f"pass ignore_index={value} to skip such rows" if ignore_index is None
                else f"ignore_index is {ignore_index}")
        raise ValueError(f"cross_entropy target {value} at position {where} is outside the valid "
                         f"range [0, {V}) of the {V} classes: {hint}")


# ---- GELU ----------------------------------------------------------------------------------------

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715     # the x^3 coefficient of the tanh form (Hendrycks & Gimpel 2016)
_GELU_SATURATED = 30.0   # beyond |x| = 30, 2u > 1900 and exp(-2|u|) is 0 in float64: x^3 need not grow


class GELU(Function):
    new_grads = True  # backward returns one new array
    # Hendrycks & Gimpel 2016, tanh form: gelu(x) = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi)(x + 0.044715 x^3)
    # Since 0.5 (1 + tanh u) = sigmoid(2u) =: s:
    #   gelu(x) = x s,   d/dx = s + x * s (1 - s) * d(2u)/dx,   d(2u)/dx = 2 sqrt(2/pi)(1 + 3 * 0.044715 x^2)
    # s and s (1 - s) = e r^2 come from ops_unary.sigmoid_parts (exact in both tails: gelu(-10) is
    # -1.0e-37, not 0), and u is computed from x clipped to +-30, where s is already exactly 0 or 1:
    # x^3 and x^2 never overflow (gelu'(1e20) in float32 was inf * 0 = nan; it is 1).
    compiled = True   # the @njit loops of gelu_kernels.py on NumPy arrays (same bits), and on CuPy
    #                   arrays the @cuda.jit kernels of cuda_kernels/gelu.py; False: arrays only

    @staticmethod
    def forward(ctx, x):
        kernels = GELU.compiled and compiled_kernels(".gelu_kernels", x)
        if kernels:
            return GELU._forward_compiled(ctx, kernels, x)
        gpu = GELU.compiled and gpu_kernels("cuda_kernels.gelu", x)
        if gpu:                                              # one kernel instead of fifteen
            out, xc, e = gpu.gelu_forward(x.reshape(-1), _GELU_SATURATED, _GELU_CUBIC,
                                          2.0 * _SQRT_2_OVER_PI)
            ctx.save_for_backward(xc.reshape(x.shape), e.reshape(x.shape))
            return out.reshape(x.shape)
        xp = array_module(x)
        xc = xp.minimum(xp.maximum(x, -_GELU_SATURATED), _GELU_SATURATED)   # np.clip's values, faster
        two_u = xc * xc
        two_u *= _GELU_CUBIC
        two_u += 1.0
        two_u *= xc
        two_u *= 2.0 * _SQRT_2_OVER_PI                       # 2u, which has the sign of x
        e, r = sigmoid_parts(two_u)
        ctx.save_for_backward(xc, e)                         # two arrays, as x and tanh(u) were
        return x * sigmoid_from_parts(xc >= 0, e, r)

    @staticmethod
    def backward(ctx, grad):
        xc, e = ctx.saved
        kernels = (GELU.compiled and grad.shape == xc.shape
                   and compiled_kernels(".gelu_kernels", xc, grad))
        if kernels:
            dt = xc.dtype.type
            out = np.empty_like(xc)
            kernels.gelu_backward(xc.reshape(-1), e.reshape(-1), grad.reshape(-1), out.reshape(-1),
                                  dt(1.0), dt(3 * _GELU_CUBIC), dt(2.0 * _SQRT_2_OVER_PI))
            return out
        gpu = GELU.compiled and grad.shape == xc.shape and gpu_kernels("cuda_kernels.gelu", xc, e, grad)
        if gpu:
            return gpu.gelu_backward(xc.reshape(-1), e.reshape(-1), grad.reshape(-1),
                                     3 * _GELU_CUBIC, 2.0 * _SQRT_2_OVER_PI).reshape(xc.shape)
        r = 1.0 / (1.0 + e)
        s = sigmoid_from_parts(xc >= 0, e, r)
        slope = xc * xc                                      # x * s(1-s) * d(2u)/dx, in place:
        slope *= 3 * _GELU_CUBIC
        slope += 1.0
        slope *= (2.0 * _SQRT_2_OVER_PI) * xc
        slope *= e
        slope *= r
        slope *= r
        slope += s
        slope *= grad
        return slope

    @staticmethod
    def _forward_compiled(ctx, kernels, x):
        """The forward above in three passes: 2u and the clip, NumPy's exp in place, the output."""
        dt = x.dtype.type
        xc, e, out = np.empty_like(x), np.empty_like(x), np.empty_like(x)
        flat_x, flat_xc, flat_e = x.reshape(-1), xc.reshape(-1), e.reshape(-1)
        kernels.gelu_two_u(flat_x, flat_xc, flat_e, dt(_GELU_SATURATED), dt(_GELU_CUBIC), dt(1.0),
                           dt(2.0 * _SQRT_2_OVER_PI))                 # e holds -|2u| for now
        np.exp(e, out=e)
        kernels.gelu_output(flat_x, flat_xc, flat_e, out.reshape(-1), dt(1.0))
        ctx.save_for_backward(xc, e)
        return out


def gelu(x):
    """GELU, tanh approximation (as GPT-2 and PyTorch's approximate='tanh'), elementwise."""
    return GELU.apply(x)


# ---- dropout -------------------------------------------------------------------------------------

class _ScaleByMask(Function):
    @staticmethod
    def forward(ctx, x, scaled_mask):
        ctx.save_for_backward(scaled_mask)
        return x * scaled_mask

    @staticmethod
    def backward(ctx, grad):
        (scaled_mask,) = ctx.saved
        return grad * scaled_mask, None


def dropout(x, p=0.1, training=True):
    """Zero each element with probability p and scale the rest by 1/(1-p) (inverted dropout).

    The mask comes from the library's seeded generator (tinysparse.random), so runs repeat.
    In eval mode, or with p = 0, x passes through untouched.
    """
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be a number in [0, 1), got {p!r}")
    if not training or p == 0.0:
        return x
    data = x.data if isinstance(x, Tensor) else x
    keep = ts_random.uniform(data.shape, device=x.device if isinstance(x, Tensor) else "cpu") >= p
    scaled_mask = keep.astype(data.dtype) * (1.0 / (1.0 - p))  # a Python float keeps the dtype
    return _ScaleByMask.apply(x, scaled_mask)
