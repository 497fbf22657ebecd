"""Reductions: sum, mean, max, min, and the index reductions argmax and argmin.

Split from ops.py, which re-exports them; the same rules hold (backward right under forward).
Numerics, float32 and float64: a partial sum can overflow although the result is finite
(sum([3e38, 3e38, -3e38]) in float32, mean([1e308, 1e308]) in float64). Where the plain result is
not finite but the input is, it is computed again safely: float32 (and narrower) adds up in
float64 and rounds once; float64 scales by the largest |x| along the axes, m, and adds up x / m
(no partial sum can exceed n), then multiplies by m: mean = m * mean(x / m), clipped to [-1, 1]
before the product since the mean of numbers in [-1, 1] lies there and a rounding step past 1
would make m * 1.0000000000000002 overflow at m = 1.8e308. On the CPU the safe way runs
only then, so ordinary results are NumPy's to the bit; on a GPU, where the check would wait for
the device, it always runs.
Also:
- the mean over an empty axis is nan (0/0, as in NumPy and PyTorch) without a warning, and its
  gradient is empty; max and min over an empty axis have no value and are an error.

`axis=` and `dim=` name the same argument. One difference on purpose: like PyTorch,
`max(dim=d)` / `min(dim=d)` return (values, indices), while `max(axis=d)` returns values (NumPy).
"""
import collections
import math

import numpy as np

from .backend import array_module
from .spelling import axis_argument, keepdims_argument, normalize_axes
from .tensor import Function, Tensor

ValuesIndices = collections.namedtuple("ValuesIndices", "values indices")


def _accumulator(dtype):
    """The dtype a float sum adds up in safely: float64 for anything narrower, else None."""
    return np.float64 if dtype.kind == "f" and dtype.itemsize < 8 else None


def _safe_when_needed(a, plain, safe):
    """plain(), or safe() where plain's result overflowed on a finite input (see above)."""
    xp = array_module(a)
    if a.dtype.kind != "f":
        return plain()
    if xp is np:
        with np.errstate(over="ignore"):        # an overflow here is answered below
            out = plain()
        finite = math.isfinite(out) if np.ndim(out) == 0 else np.isfinite(out).all()
        if finite or not np.isfinite(a).all():
            return out
    return safe()


def _scaled_reduction(a, axis, keepdims, mean):
    """sum or mean of a float64 array as m * reduce(a / m), m = max |a| along the axes (see above)."""
    xp = array_module(a)
    m = xp.abs(a).max(axis=axis, keepdims=True)
    m = xp.where(m == 0, xp.ones_like(m), m)                 # an all-zero slice: a / 1
    q = (a / m).mean(axis=axis, keepdims=True) if mean else (a / m).sum(axis=axis, keepdims=True)
    if mean:
        q = xp.clip(q, -1.0, 1.0)                            # |mean(a / m)| <= 1 exactly
    out = q * m
    if keepdims:
        return out
    return out.reshape(()) if axis is None else xp.squeeze(out, axis=normalize_axes(axis, a.ndim))


def sum_divided(a, n):
    """a.sum() / n for a 1-D float array and a count n > 0 (an int, or a device scalar), finite
    wherever the quotient is, by this module's rule: the plain quotient first on the CPU (NumPy's
    bits), and where it overflowed on finite input, float64 accumulation (float32 and narrower)
    or m * (sum(a / m) / n) with m = max |a| (float64). For a mean over a count other than a's
    size: cross-entropy's over the rows it does not ignore (4 float32 losses near 1e38 summed
    past 3.4e38 although their mean is 9e37)."""
    acc = _accumulator(a.dtype)
    if acc is not None:
        safe = lambda: (a.sum(dtype=acc) / n).astype(a.dtype)  # noqa: E731
    else:
        def safe():
            m = array_module(a).abs(a).max() if a.size else 1.0
            m = m if m > 0 else 1.0
            return ((a / m).sum() / n) * m
    return _safe_when_needed(a, lambda: a.sum() / n, safe)


def _expand_reduced(grad, shape, axis, keepdims):
    """Put back the axes a reduction removed, so grad broadcasts against the input's shape."""
    if axis is None:
        return grad.reshape((1,) * len(shape))
    if not keepdims:
        for ax in normalize_axes(axis, len(shape)):
            grad = array_module(grad).expand_dims(grad, ax)
    return grad


def _count(shape, axis):
    """How many elements each output element reduces over."""
    return math.prod(shape[ax] for ax in normalize_axes(axis, len(shape), shape))


class Sum(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.shape, ctx.axis, ctx.keepdims = a.shape, axis, keepdims
        acc = _accumulator(a.dtype)
        return _safe_when_needed(
            a, lambda: a.sum(axis=axis, keepdims=keepdims),
            (lambda: a.sum(axis=axis, keepdims=keepdims, dtype=acc).astype(a.dtype)) if acc else
            (lambda: _scaled_reduction(a, axis, keepdims, mean=False)))

    @staticmethod
    def backward(ctx, grad):
        grad = _expand_reduced(grad, ctx.shape, ctx.axis, ctx.keepdims)
        return array_module(grad).broadcast_to(grad, ctx.shape)


class Mean(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        n = _count(a.shape, axis)
        ctx.shape, ctx.axis, ctx.keepdims, ctx.n = a.shape, axis, keepdims, n
        if n == 0 and a.dtype.kind == "f":     # 0/0: nan, quietly (0 * nan raises no flag)
            return a.sum(axis=axis, keepdims=keepdims) * np.nan
        acc = _accumulator(a.dtype)
        if acc is not None:
            safe = lambda: (a.sum(axis=axis, keepdims=keepdims, dtype=acc) / n).astype(a.dtype)  # noqa: E731
        else:
            safe = lambda: _scaled_reduction(a, axis, keepdims, mean=True)  # noqa: E731
        return _safe_when_needed(a, lambda: a.mean(axis=axis, keepdims=keepdims), safe)

    @staticmethod
    def backward(ctx, grad):
        xp = array_module(grad)
        if ctx.n == 0:
            return xp.zeros(ctx.shape, dtype=grad.dtype)
        grad = _expand_reduced(grad, ctx.shape, ctx.axis, ctx.keepdims) / ctx.n
        return xp.broadcast_to(grad, ctx.shape)


def _extreme_forward(ctx, a, axis, keepdims, name):
    """max or min along axes; saves where the input equals it (for the tie-sharing backward)."""
    axes = normalize_axes(axis, a.ndim, a.shape)
    if math.prod(a.shape[ax] for ax in axes) == 0 and (
            axis is None or math.prod(n for i, n in enumerate(a.shape) if i not in axes) > 0):
        raise ValueError(f"{name} over an empty axis has no value (shape {a.shape}, axis {axis}): "
                         f"check that the input is not empty before reducing it")
    out = getattr(a, name)(axis=axis, keepdims=True)
    ctx.save_for_backward(a == out)
    ctx.shape, ctx.axis, ctx.keepdims = a.shape, axis, keepdims
    if keepdims:
        return out
    return out.reshape(()) if axis is None else array_module(a).squeeze(out, axis=axis)


def _extreme_backward(ctx, grad):
    (is_extreme,) = ctx.saved
    grad = _expand_reduced(grad, ctx.shape, ctx.axis, ctx.keepdims)
    ties = is_extreme.sum(axis=ctx.axis, keepdims=True)
    return grad * is_extreme / ties


class Max(Function):
    """Maximum along axes. Ties share the gradient equally (the subgradient that keeps sums exact)."""
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        return _extreme_forward(ctx, a, axis, keepdims, "max")

    @staticmethod
    def backward(ctx, grad):
        return _extreme_backward(ctx, grad)


class Min(Function):
    """Minimum along axes. Ties share the gradient equally."""
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        return _extreme_forward(ctx, a, axis, keepdims, "min")

    @staticmethod
    def backward(ctx, grad):
        return _extreme_backward(ctx, grad)


# ---- the functional spellings (Tensor.sum & co. call these) ----------------------------------------

def sum(a, axis=None, keepdims=False, *, dim=None, keepdim=None):  # noqa: A001 (mirrors numpy.sum)
    return Sum.apply(a, axis=axis_argument(axis, dim), keepdims=keepdims_argument(keepdims, keepdim))


def mean(a, axis=None, keepdims=False, *, dim=None, keepdim=None):
    return Mean.apply(a, axis=axis_argument(axis, dim), keepdims=keepdims_argument(keepdims, keepdim))


def _extreme(cls, arg, a, axis, keepdims, dim, keepdim):
    keepdims = keepdims_argument(keepdims, keepdim)
    if dim is None:
        return cls.apply(a, axis=axis, keepdims=keepdims)
    axis_argument(axis, dim)  # refuses both
    if isinstance(dim, (tuple, list)):
        raise TypeError(f"{cls.__name__.lower()}(dim=...) returns (values, indices), so dim must "
                        f"be one int; for several axes use axis={tuple(dim)} (values only)")
    return ValuesIndices(cls.apply(a, axis=dim, keepdims=keepdims),
                         arg(a, axis=dim, keepdims=keepdims))


def max(a, axis=None, keepdims=False, *, dim=None, keepdim=None):  # noqa: A001 (mirrors numpy.max)
    """Values along `axis` (NumPy); with `dim=` a (values, indices) pair, as torch.max(x, dim)."""
    return _extreme(Max, argmax, a, axis, keepdims, dim, keepdim)


def min(a, axis=None, keepdims=False, *, dim=None, keepdim=None):  # noqa: A001 (mirrors numpy.min)
    """Values along `axis` (NumPy); with `dim=` a (values, indices) pair, as torch.min(x, dim)."""
    return _extreme(Min, argmin, a, axis, keepdims, dim, keepdim)


def _arg(name, a, axis, keepdims, dim, keepdim):
    data = a.data if isinstance(a, Tensor) else a
    axis = axis_argument(axis, dim)
    keepdims = keepdims_argument(keepdims, keepdim)
    if axis is not None:
        axis = normalize_axes(axis, data.ndim, data.shape)
        if len(axis) != 1:
            raise TypeError(f"{name} takes one axis, got {axis}")
        axis = axis[0]
    if data.size == 0:
        raise ValueError(f"{name} of an empty tensor (shape {data.shape}) has no value")
    xp = array_module(data)
    return Tensor(xp.asarray(getattr(xp, name)(data, axis=axis, keepdims=keepdims)))


def argmax(a, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Index of the largest element (of the flattened tensor when axis is None); not differentiable."""
    return _arg("argmax", a, axis, keepdims, dim, keepdim)


def argmin(a, axis=None, keepdims=False, *, dim=None, keepdim=None):
    """Index of the smallest element (of the flattened tensor when axis is None); not differentiable."""
    return _arg("argmin", a, axis, keepdims, dim, keepdim)
