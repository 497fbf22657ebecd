"""Differentiable primitives. Each is a Function whose backward sits right under its forward.

Every backward returns one gradient per positional input, in the output's (possibly broadcast)
shape; the engine (tensor.py) sums broadcast axes away. Arrays are NumPy or CuPy: the code asks
`array_module` for the right one and never copies data it does not have to.
"""
import numpy as np

from .backend import array_module
from .tensor import Function, Tensor

# reshape, permute, broadcast_to, indexing, concatenate, stack, where live in ops_shape.py
from .ops_shape import (BroadcastTo, Concatenate, GetItem, Permute, Reshape, Stack,  # noqa: F401
                        Where, cat, concatenate, getitem, masked_fill, stack, where)


# ---- elementwise arithmetic ----------------------------------------------------------------------

class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        return a + b

    @staticmethod
    def backward(ctx, grad):
        return grad, grad


class Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        return a - b

    @staticmethod
    def backward(ctx, grad):
        return grad, -grad


class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved
        ga = grad * b if ctx.needs_input_grad[0] else None
        gb = grad * a if ctx.needs_input_grad[1] else None
        return ga, gb


class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a / b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved
        ga = grad / b if ctx.needs_input_grad[0] else None
        # d(a/b)/db = -a / b^2
        gb = -grad * a / (b * b) if ctx.needs_input_grad[1] else None
        return ga, gb


class Neg(Function):
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, grad):
        return -grad


class Pow(Function):
    """a ** p for a constant scalar exponent p."""
    @staticmethod
    def forward(ctx, a, exponent):
        ctx.save_for_backward(a)
        ctx.exponent = exponent
        return a ** exponent

    @staticmethod
    def backward(ctx, grad):
        (a,) = ctx.saved
        p = ctx.exponent
        return grad * p * a ** (p - 1), None


def pow(a, exponent):
    if isinstance(exponent, Tensor) or not np.isscalar(exponent):
        raise TypeError("pow takes a scalar exponent; for a tensor exponent use exp(b * log(a))")
    return Pow.apply(a, float(exponent))


# ---- elementwise functions -----------------------------------------------------------------------

class Exp(Function):
    @staticmethod
    def forward(ctx, a):
        out = array_module(a).exp(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved
        return grad * out


class Log(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save_for_backward(a)
        return array_module(a).log(a)

    @staticmethod
    def backward(ctx, grad):
        (a,) = ctx.saved
        return grad / a


class Sqrt(Function):
    @staticmethod
    def forward(ctx, a):
        out = array_module(a).sqrt(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved
        return grad / (2.0 * out)


class Tanh(Function):
    @staticmethod
    def forward(ctx, a):
        out = array_module(a).tanh(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved
        return grad * (1.0 - out * out)


class Relu(Function):
    @staticmethod
    def forward(ctx, a):
        positive = a > 0
        ctx.save_for_backward(positive)
        return a * positive

    @staticmethod
    def backward(ctx, grad):
        (positive,) = ctx.saved
        return grad * positive


class Sigmoid(Function):
    @staticmethod
    def forward(ctx, a):
        xp = array_module(a)
        # 1 / (1 + e^-a) overflows e^-a for very negative a; tanh form is stable everywhere.
        out = 0.5 * (xp.tanh(0.5 * a) + 1.0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved
        return grad * out * (1.0 - out)


class Cast(Function):
    @staticmethod
    def forward(ctx, a, dtype):
        ctx.dtype = a.dtype
        return a.astype(dtype, copy=False)

    @staticmethod
    def backward(ctx, grad):
        return grad.astype(ctx.dtype, copy=False)


# ---- matrix multiplication -----------------------------------------------------------------------

class MatMul(Function):
    """a @ b with NumPy's rules: batched over leading axes, broadcasting, 1-D operands promoted."""
    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        if a.ndim > 2 and b.ndim == 2:
            # (B, T, C) @ (C, D): one large GEMM on (B*T, C) is much faster than B small ones.
            return (a.reshape(-1, a.shape[-1]) @ b).reshape(*a.shape[:-1], b.shape[-1])
        return a @ b

    @staticmethod
    def backward(ctx, grad):
        a, b = ctx.saved
        if a.ndim == 1 and b.ndim == 1:  # a dot product
            return grad * b, grad * a
        # Promote 1-D operands to matrices so one formula covers every case:
        # a (..., n, k) @ b (..., k, m) = out (..., n, m);  da = g b^T,  db = a^T g.
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g2 = grad
        if a.ndim == 1:
            g2 = g2[..., None, :]
        if b.ndim == 1:
            g2 = g2[..., None]
        ga = gb = None
        if ctx.needs_input_grad[0]:
            if b2.ndim == 2 and g2.ndim > 2:
                ga = (g2.reshape(-1, g2.shape[-1]) @ b2.T).reshape(*g2.shape[:-1], b2.shape[0])
            else:
                ga = g2 @ b2.swapaxes(-1, -2)
            ga = ga.reshape(-1, a.shape[0]).sum(axis=0) if a.ndim == 1 else ga  # (..., 1, k) -> (k,)
        if ctx.needs_input_grad[1]:
            if b2.ndim == 2 and a2.ndim > 2:
                # sum over the batch happens inside one GEMM: (C, B*T) @ (B*T, D)
                gb = a2.reshape(-1, a2.shape[-1]).T @ g2.reshape(-1, g2.shape[-1])
            else:
                gb = a2.swapaxes(-1, -2) @ g2
            gb = gb.reshape(-1, b.shape[0]).sum(axis=0) if b.ndim == 1 else gb  # (..., k, 1) -> (k,)
        return ga, gb


def matmul(a, b):
    return MatMul.apply(a, b)


# ---- reductions ----------------------------------------------------------------------------------

def _expand_reduced(grad, shape, axis, keepdims):
    """Put back the axes a reduction removed, so grad broadcasts against the input's shape."""
    if axis is None:
        return grad.reshape((1,) * len(shape))
    if not keepdims:
        axes = (axis,) if np.isscalar(axis) else axis
        axes = sorted(ax % len(shape) for ax in axes)
        for ax in axes:
            grad = array_module(grad).expand_dims(grad, ax)
    return grad


def _count(shape, axis):
    if axis is None:
        return int(np.prod(shape))
    axes = (axis,) if np.isscalar(axis) else axis
    return int(np.prod([shape[ax] for ax in axes]))


class Sum(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.shape, ctx.axis, ctx.keepdims = a.shape, axis, keepdims
        return a.sum(axis=axis, keepdims=keepdims)

    @staticmethod
    def backward(ctx, grad):
        grad = _expand_reduced(grad, ctx.shape, ctx.axis, ctx.keepdims)
        return array_module(grad).broadcast_to(grad, ctx.shape)


class Mean(Function):
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        ctx.shape, ctx.axis, ctx.keepdims = a.shape, axis, keepdims
        return a.mean(axis=axis, keepdims=keepdims)

    @staticmethod
    def backward(ctx, grad):
        grad = _expand_reduced(grad, ctx.shape, ctx.axis, ctx.keepdims) / _count(ctx.shape, ctx.axis)
        return array_module(grad).broadcast_to(grad, ctx.shape)


class Max(Function):
    """Maximum along axes. Ties share the gradient equally (the subgradient that keeps sums exact)."""
    @staticmethod
    def forward(ctx, a, axis=None, keepdims=False):
        out = a.max(axis=axis, keepdims=True)
        ctx.save_for_backward(a == out)
        ctx.shape, ctx.axis, ctx.keepdims = a.shape, axis, keepdims
        if keepdims:
            return out
        return out.reshape(()) if axis is None else array_module(a).squeeze(out, axis=axis)

    @staticmethod
    def backward(ctx, grad):
        (is_max,) = ctx.saved
        grad = _expand_reduced(grad, ctx.shape, ctx.axis, ctx.keepdims)
        ties = is_max.sum(axis=ctx.axis, keepdims=True)
        return grad * is_max / ties


# ---- functional spellings of the Tensor methods --------------------------------------------------

def exp(a):
    return Exp.apply(a)


def log(a):
    return Log.apply(a)


def sqrt(a):
    return Sqrt.apply(a)


def tanh(a):
    return Tanh.apply(a)


def relu(a):
    return Relu.apply(a)


def sigmoid(a):
    return Sigmoid.apply(a)


def sum(a, axis=None, keepdims=False):  # noqa: A001 (mirrors numpy.sum)
    return Sum.apply(a, axis=axis, keepdims=keepdims)


def mean(a, axis=None, keepdims=False):
    return Mean.apply(a, axis=axis, keepdims=keepdims)


def max(a, axis=None, keepdims=False):  # noqa: A001 (mirrors numpy.max)
    return Max.apply(a, axis=axis, keepdims=keepdims)


def reshape(a, shape):
    return Reshape.apply(a, shape=tuple(shape))


def permute(a, axes):
    return Permute.apply(a, axes=tuple(axes))


def broadcast_to(a, shape):
    return BroadcastTo.apply(a, shape=tuple(shape))
