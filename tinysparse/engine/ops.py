"""Differentiable primitives. Each is a Function whose backward sits right under its forward.

Here: the arithmetic operators (+, -, *, /, unary -, ** with a scalar exponent) and matrix
multiplication. The elementwise functions (exp, log, sqrt, tanh, relu, sigmoid, cast, clone)
live in ops_unary.py, the reductions in ops_reduce.py, the shape ops in ops_shape.py; all are
re-exported here, so `ops.X` names every primitive.

Every backward returns one gradient per positional input, in the output's (possibly broadcast)
shape; the engine (tensor.py) sums broadcast axes away. Arrays are NumPy or CuPy: the code asks
`array_module` for the right one and never copies data it does not have to.

Every op is finite wherever its mathematics is, in float32 and float64: no intermediate squares a
large value (Div's backward), and no 0 * inf at a point where the derivative is finite (Pow with
exponent 0).
"""
import numpy as np

from .backend import array_module
from .tensor import Function, Tensor

# exp, log, sqrt, tanh, relu, sigmoid, cast, clone live in ops_unary.py (rpow below builds on Exp);
# reshape, permute, broadcast_to, indexing, concatenate, stack, where in ops_shape.py;
# sum, mean, max, min, argmax, argmin in ops_reduce.py
from .ops_unary import (Cast, Clone, Exp, Log, Relu, Sigmoid, Sqrt, Tanh, clone, exp,  # noqa: F401
                        log, relu, sigmoid, sigmoid_from_parts, sigmoid_parts, sqrt, tanh)
from .ops_shape import (BroadcastTo, Concatenate, GetItem, Permute, Reshape, Stack,  # noqa: F401
                        Where, broadcast_to, cat, concatenate, flatten, getitem, masked_fill,
                        permute, reshape, squeeze, stack, take_along_axis, unsqueeze, where)
from .ops_reduce import (Max, Mean, Sum, argmax, argmin, max, mean, min, sum)  # noqa: F401,A004


# ---- elementwise arithmetic ----------------------------------------------------------------------

class Add(Function):
    integers_take_float_dtype = True

    @staticmethod
    def forward(ctx, a, b):
        return a + b

    @staticmethod
    def backward(ctx, grad):
        return grad, grad


class Sub(Function):
    integers_take_float_dtype = True

    @staticmethod
    def forward(ctx, a, b):
        return a - b

    @staticmethod
    def backward(ctx, grad):
        return grad, -grad


class Mul(Function):
    integers_take_float_dtype = True

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
    # d(a/b)/da = 1/b;  d(a/b)/db = -a/b^2 = -(1/b) * (a/b): written with the output, b*b (which
    # overflows for |b| > 1.8e19 in float32 although a/b^2 may be an ordinary number) never appears
    integers_take_float_dtype = True

    @staticmethod
    def forward(ctx, a, b):
        out = a / b
        ctx.save_for_backward(b, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        b, out = ctx.saved
        g_over_b = grad / b
        ga = g_over_b if ctx.needs_input_grad[0] else None
        gb = -g_over_b * out if ctx.needs_input_grad[1] else None
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
        if p == 0:  # a**0 = 1 is constant; p * a**-1 would be 0 * inf at a = 0
            return array_module(grad).zeros_like(grad), None
        return grad * p * a ** (p - 1), None


def pow(a, exponent):
    if isinstance(exponent, Tensor) or not np.isscalar(exponent):
        raise TypeError("pow takes a scalar exponent; for a tensor exponent use exp(b * log(a))")
    return Pow.apply(a, float(exponent))


def rpow(base, exponent):
    """base ** exponent for a positive scalar base and a Tensor exponent: exp(exponent * log(base))."""
    if not np.isscalar(base) or not base > 0:
        raise TypeError(f"scalar ** Tensor needs a positive scalar base, got {base!r}: "
                        f"write exp(t * log(base)) for anything else")
    return Exp.apply(Mul.apply(exponent, float(np.log(base))))


# ---- matrix multiplication -----------------------------------------------------------------------

class MatMul(Function):
    """a @ b with NumPy's rules: batched over leading axes, broadcasting, 1-D operands promoted.

    Like every BLAS, the products and partial sums are formed in the inputs' dtype: a result is
    finite when they are (|a| |b| k below the dtype's maximum), not whenever the exact one is."""
    integers_take_float_dtype = True

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
