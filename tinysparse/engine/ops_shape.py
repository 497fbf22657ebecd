"""Differentiable primitives that move or pick elements: reshape, permute, broadcast, indexing,
concatenation, stacking and selection. Split from ops.py (arithmetic, functions, matmul,
reductions), which re-exports them; the same rules hold: each backward sits right under its
forward and returns one gradient per positional input.
"""
import numpy as np

from .backend import array_module
from .scatter import index_add
from .tensor import Function, Tensor


# ---- shape and layout ----------------------------------------------------------------------------

class Reshape(Function):
    @staticmethod
    def forward(ctx, a, shape):
        ctx.shape = a.shape
        return a.reshape(shape)

    @staticmethod
    def backward(ctx, grad):
        return grad.reshape(ctx.shape)


class Permute(Function):
    @staticmethod
    def forward(ctx, a, axes):
        ctx.axes = axes
        return a.transpose(axes)

    @staticmethod
    def backward(ctx, grad):
        return grad.transpose(tuple(np.argsort(ctx.axes)))  # the inverse permutation


class BroadcastTo(Function):
    @staticmethod
    def forward(ctx, a, shape):
        return array_module(a).broadcast_to(a, shape)

    @staticmethod
    def backward(ctx, grad):
        return grad  # the engine sums the broadcast axes back to a's shape


def _is_advanced(index):
    """True when an index gathers (integer or boolean arrays), so positions may repeat."""
    parts = index if isinstance(index, tuple) else (index,)
    return any(not isinstance(p, (int, np.integer, slice, type(None), type(Ellipsis))) for p in parts)


class GetItem(Function):
    """a[index] for slices, integers, None, Ellipsis and integer/boolean arrays.

    Backward scatters the gradient back. With an integer array an element can be picked more
    than once (an embedding lookup of a repeated token), so the scatter must *add*, in a fixed
    order (scatter.index_add: np.add.at on the CPU, no atomics on a GPU), unlike
    `g[idx] += grad`, which keeps only one of the repeats.
    """
    @staticmethod
    def forward(ctx, a, index):
        ctx.shape, ctx.dtype, ctx.index = a.shape, a.dtype, index
        return a[index]

    @staticmethod
    def backward(ctx, grad):
        xp = array_module(grad)
        full = xp.zeros(ctx.shape, dtype=grad.dtype)
        if _is_advanced(ctx.index):
            index_add(full, ctx.index, grad)
        else:
            full[ctx.index] = grad
        return full


def getitem(a, index):
    if isinstance(index, tuple):
        index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
    elif isinstance(index, Tensor):
        index = index.data
    if isinstance(index, list):
        index = np.asarray(index)
    return GetItem.apply(a, index)


class Concatenate(Function):
    @staticmethod
    def forward(ctx, *arrays, axis=0):
        ctx.axis = axis
        ctx.sizes = [x.shape[axis] for x in arrays]
        return array_module(arrays[0]).concatenate(arrays, axis=axis)

    @staticmethod
    def backward(ctx, grad):
        splits = np.cumsum(ctx.sizes)[:-1]
        return tuple(array_module(grad).split(grad, splits, axis=ctx.axis))


def concatenate(tensors, axis=0):
    return Concatenate.apply(*tensors, axis=axis)


cat = concatenate


class Stack(Function):
    @staticmethod
    def forward(ctx, *arrays, axis=0):
        ctx.axis, ctx.count = axis, len(arrays)
        return array_module(arrays[0]).stack(arrays, axis=axis)

    @staticmethod
    def backward(ctx, grad):
        xp = array_module(grad)
        return tuple(xp.take(grad, i, axis=ctx.axis) for i in range(ctx.count))


def stack(tensors, axis=0):
    return Stack.apply(*tensors, axis=axis)


# ---- selection -----------------------------------------------------------------------------------

class Where(Function):
    """condition ? a : b, elementwise; the condition is not differentiable."""
    @staticmethod
    def forward(ctx, condition, a, b):
        ctx.save_for_backward(condition)
        return array_module(condition).where(condition, a, b)

    @staticmethod
    def backward(ctx, grad):
        (condition,) = ctx.saved
        zero = grad.dtype.type(0)
        ga = grad * condition if ctx.needs_input_grad[1] else None
        gb = array_module(grad).where(condition, zero, grad) if ctx.needs_input_grad[2] else None
        return None, ga, gb


def where(condition, a, b):
    condition = condition.data if isinstance(condition, Tensor) else condition
    return Where.apply(array_module(condition).asarray(condition, dtype=bool), a, b)


def masked_fill(a, mask, value):
    """a with `value` wherever mask is True (mask broadcasts against a)."""
    return where(mask, value, a)
