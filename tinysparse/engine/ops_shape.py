"""Differentiable primitives that move or pick elements: reshape, permute, broadcast, indexing,
concatenation, stacking and selection. Split from ops.py (arithmetic, functions, matmul,
reductions), which re-exports them; the same rules hold: each backward sits right under its
forward and returns one gradient per positional input.
"""
import operator

import numpy as np

from .backend import array_module
from .scatter import index_add
from .spelling import axis_argument, normalize_axes
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


def reshape(a, shape):
    return Reshape.apply(a, shape=tuple(shape))


def unsqueeze(a, dim):
    """A new axis of size 1 at position `dim` (in [-ndim-1, ndim], as in PyTorch)."""
    shape = a.shape
    dim = operator.index(dim)
    if not -len(shape) - 1 <= dim <= len(shape):
        raise IndexError(f"unsqueeze: dim {dim} is out of range for shape {tuple(shape)}: "
                         f"use a dim in [{-len(shape) - 1}, {len(shape)}]")
    dim = dim % (len(shape) + 1)
    return Reshape.apply(a, shape=tuple(shape[:dim]) + (1,) + tuple(shape[dim:]))


def squeeze(a, dim=None):
    """Drop axes of size 1: all of them, or those named by `dim` (an int or a tuple). As in
    PyTorch, a named axis whose size is not 1 is left alone."""
    shape = a.shape
    axes = normalize_axes(dim, len(shape), shape)
    return Reshape.apply(a, shape=tuple(n for i, n in enumerate(shape) if not (i in axes and n == 1)))


def flatten(a, start_dim=0, end_dim=-1):
    """Merge the axes start_dim..end_dim (inclusive) into one, as torch.flatten; a 0-d tensor
    becomes shape (1,)."""
    shape = tuple(a.shape)
    if not shape:
        return Reshape.apply(a, shape=(1,))
    start, end = (normalize_axes(d, len(shape), shape)[0] for d in (start_dim, end_dim))
    if start > end:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim} "
                         f"for shape {shape}")
    merged = int(np.prod(shape[start:end + 1]))
    return Reshape.apply(a, shape=shape[:start] + (merged,) + shape[end + 1:])


class Permute(Function):
    @staticmethod
    def forward(ctx, a, axes):
        ctx.axes = axes
        return a.transpose(axes)

    @staticmethod
    def backward(ctx, grad):
        return grad.transpose(tuple(np.argsort(ctx.axes)))  # the inverse permutation


def permute(a, axes):
    return Permute.apply(a, axes=tuple(axes))


class BroadcastTo(Function):
    @staticmethod
    def forward(ctx, a, shape):
        return array_module(a).broadcast_to(a, shape)

    @staticmethod
    def backward(ctx, grad):
        return grad  # the engine sums the broadcast axes back to a's shape


def broadcast_to(a, shape):
    return BroadcastTo.apply(a, shape=tuple(shape))


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
    """a[index]; index arrays (NumPy, lists, Tensors) are moved to a's device first, so that
    backward scatters with an index of the gradient's own kind (CuPy refuses NumPy arrays)."""
    xp = array_module(a.data if isinstance(a, Tensor) else a)
    if isinstance(index, tuple):
        index = tuple(_index_part(i, xp) for i in index)
    else:
        index = _index_part(index, xp)
    return GetItem.apply(a, index)


def _index_part(part, xp):
    part = part.data if isinstance(part, Tensor) else part
    if isinstance(part, list):
        part = np.asarray(part)
    if xp is not np and isinstance(part, np.ndarray):
        part = xp.asarray(part)                                 # one copy to the device
    return part


class Concatenate(Function):
    @staticmethod
    def forward(ctx, *arrays, axis=0):
        ctx.axis = axis
        ctx.sizes = [x.shape[axis] for x in arrays]
        return array_module(arrays[0]).concatenate(arrays, axis=axis)

    @staticmethod
    def backward(ctx, grad):
        splits = np.cumsum(ctx.sizes)[:-1].tolist()     # host integers, for either module
        return tuple(array_module(grad).split(grad, splits, axis=ctx.axis))


def _sequence(name, tensors):
    """The tensors of cat/stack as a tuple; a clear error for a lone Tensor or none at all."""
    if isinstance(tensors, Tensor) or not hasattr(tensors, "__iter__") or hasattr(tensors, "dtype"):
        raise TypeError(f"{name} takes a list of tensors, got {type(tensors).__name__}: "
                        f"write ts.{name}([a, b], dim=0)")
    tensors = tuple(tensors)
    if not tensors:
        raise ValueError(f"{name} needs at least one tensor, got an empty list")
    return tensors


def concatenate(tensors, axis=None, *, dim=None):
    """Join tensors along an existing axis (`axis=` or `dim=`, 0 by default)."""
    return Concatenate.apply(*_sequence("cat", tensors), axis=axis_argument(axis, dim, default=0))


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


def stack(tensors, axis=None, *, dim=None):
    """Join tensors of one shape along a new axis (`axis=` or `dim=`, 0 by default)."""
    return Stack.apply(*_sequence("stack", tensors), axis=axis_argument(axis, dim, default=0))


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
    """condition ? a : b; a NumPy condition (or list) moves to the device of a or b."""
    condition = condition.data if isinstance(condition, Tensor) else condition
    xp = array_module(condition)
    if xp is np:                                   # a host condition: on the tensors' device
        xp = next((array_module(t.data) for t in (a, b) if isinstance(t, Tensor)), np)
    return Where.apply(xp.asarray(condition, dtype=bool), a, b)


def masked_fill(a, mask, value):
    """a with `value` wherever mask is True (mask broadcasts against a)."""
    return where(mask, value, a)


class TakeAlongAxis(Function):
    """out[..., j, ...] = a[..., index[..., j, ...], ...] along `axis` (NumPy's take_along_axis,
    PyTorch's gather). Backward adds each gradient back where it was read, in rounds: round j
    scatters index[..., j, ...] of every fiber along `axis`, positions that are distinct within a
    round (one per fiber), so each round is a plain indexed add, in a fixed order j = 0, 1, ...:
    deterministic, no atomics, and no wait for a GPU (the number of rounds is a shape)."""
    @staticmethod
    def forward(ctx, a, index, axis):
        ctx.shape, ctx.index, ctx.axis = a.shape, index, axis
        return array_module(a).take_along_axis(a, index, axis=axis)

    @staticmethod
    def backward(ctx, grad):
        xp = array_module(grad)
        n = ctx.shape[ctx.axis]
        index = xp.moveaxis(ctx.index, ctx.axis, -1)
        g = xp.moveaxis(grad, ctx.axis, -1)
        rows_shape = g.shape[:-1]
        k = g.shape[-1]
        g, index = g.reshape(-1, k), index.reshape(-1, k)              # (M, k): M fibers
        full = xp.zeros((g.shape[0], n), dtype=grad.dtype)              # (M, n)
        rows = xp.arange(g.shape[0])
        for j in range(k):                                             # one position per fiber
            full[rows, index[:, j]] += g[:, j]
        full = full.reshape(*rows_shape, n)
        return xp.moveaxis(full, -1, ctx.axis), None


def take_along_axis(a, index, axis):
    """a's elements at `index` along `axis` (an integer array of a's ndim, broadcast-free:
    every other axis of index matches a's); differentiable in a."""
    data = a.data if isinstance(a, Tensor) else a
    axis = normalize_axes(axis, data.ndim, data.shape)[0]
    index = _index_part(index, array_module(data))
    return TakeAlongAxis.apply(a, index, axis=axis)
