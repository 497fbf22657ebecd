"""The stand-in's module functions (cupy.zeros, cupy.where, ...) and the dtype names it shares
with NumPy: NumPy's, on device arrays only; those whose result's size is data count a sync."""
import builtins
import sys

import numpy as _np

from ._array import _unwrap, _unwrap_kwargs, _wrap, ndarray
from ._ledger import _sync, _upload


def _function(name, np_func=None):
    np_func = np_func or getattr(_np, name)

    def func(*args, **kwargs):
        return _wrap(np_func(*_unwrap(args), **_unwrap_kwargs(kwargs)))
    func.__name__ = name
    return func


_PLAIN = ("arange", "zeros", "ones", "empty", "full", "zeros_like", "ones_like", "empty_like",
          "full_like", "exp", "log", "log1p", "expm1", "sqrt", "tanh", "abs", "absolute", "sign",
          "maximum", "minimum", "clip", "concatenate", "stack", "split", "take", "take_along_axis",
          "argpartition", "partition", "cumsum", "broadcast_to", "expand_dims",
          "squeeze", "triu", "tril", "isnan", "isfinite", "isinf", "hypot", "frexp", "ldexp",
          "searchsorted", "diff", "matmul", "dot", "sum", "mean", "max", "min", "amax", "amin",
          "argmax", "argmin", "prod", "all", "any", "logical_and", "logical_or", "logical_not",
          "equal", "not_equal", "less", "less_equal", "greater", "greater_equal", "power",
          "multiply", "add", "subtract", "divide", "true_divide", "negative", "floor", "ceil",
          "rint", "mod", "floor_divide", "right_shift", "left_shift", "bitwise_and",
          "bitwise_or", "bitwise_xor", "invert", "reshape", "transpose", "swapaxes", "ravel",
          "array_equal", "allclose", "isclose", "count_nonzero", "cumprod", "outer", "einsum",
          "copyto", "putmask", "square", "reciprocal", "exp2", "log2", "sin", "cos", "fmax",
          "fmin", "moveaxis", "atleast_1d", "atleast_2d", "tile", "flip", "roll", "pad")
for _name in _PLAIN:
    globals()[_name] = _function(_name)
del _name


def _stable(name):
    def func(a, axis=-1, kind=None):
        if kind not in (None, "stable"):   # CuPy's sorts are always stable and take no other kind
            raise ValueError(f"cupy.{name}: kind={kind!r} is not supported (None or 'stable')")
        return _wrap(getattr(_np, name)(_unwrap(a), axis=axis, kind="stable"))
    func.__name__ = name
    return func


argsort, sort = _stable("argsort"), _stable("sort")


def repeat(a, repeats, axis=None):
    if isinstance(repeats, ndarray):      # per-element repeats: the result's size is data
        _sync("repeat with array repeats")
    return _wrap(_np.repeat(_unwrap(a), _unwrap(repeats), axis=axis))


def asarray(a, dtype=None, order=None):
    if isinstance(a, ndarray):
        return a if dtype is None or a.dtype == dtype else a.astype(dtype)
    data = _np.array(a, dtype=dtype, order=order or "K", copy=True)
    _upload(data)
    return ndarray(data)


def array(a, dtype=None, copy=True, order="K", ndmin=0):
    if isinstance(a, ndarray):
        return ndarray(_np.array(a._a, dtype=dtype, copy=True, order=order, ndmin=ndmin))
    data = _np.array(a, dtype=dtype, copy=True, order=order, ndmin=ndmin)
    _upload(data)
    return ndarray(data)


def ascontiguousarray(a, dtype=None):
    return ndarray(_np.ascontiguousarray(_unwrap(a), dtype=dtype))


def asnumpy(a, stream=None, order="C", out=None):
    if isinstance(a, ndarray):
        return a.get()
    return _np.asarray(a)


def where(condition, *branches):
    if not branches:
        _sync("where(condition)")
        return _wrap(_np.nonzero(_unwrap(condition)))
    return _wrap(_np.where(_unwrap(condition), *_unwrap(branches)))


def nonzero(a):
    _sync("nonzero")
    return _wrap(_np.nonzero(_unwrap(a)))


def flatnonzero(a):
    _sync("flatnonzero")
    return _wrap(_np.flatnonzero(_unwrap(a)))


def argwhere(a):
    _sync("argwhere")
    return _wrap(_np.argwhere(_unwrap(a)))


def unique(a, *args, **kwargs):
    _sync("unique")
    return _wrap(_np.unique(_unwrap(a), *args, **kwargs))


def bincount(x, weights=None, minlength=None):
    # CuPy: `if (x < 0).any(): raise ValueError` and `size = int(cupy.max(x)) + 1`: two reads
    _sync("bincount (negative check)")
    _sync("bincount (max)")
    return _wrap(_np.bincount(_unwrap(x), _unwrap(weights), minlength=minlength or 0))


def result_type(*arrays_and_dtypes):
    return _np.result_type(*(a.dtype if isinstance(a, ndarray) else a for a in arrays_and_dtypes))


def get_array_module(*args):
    # Python's any: this module's own `any` is the stand-in's np.any (a device reduction and a sync)
    return sys.modules[__package__] if builtins.any(isinstance(a, ndarray) for a in args) else _np


_SHARED = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
           "uint16", "uint32", "uint64", "bool_", "intp", "dtype", "iinfo", "finfo",
           "inf", "nan", "pi", "e", "newaxis", "integer", "floating", "number", "generic",
           "complex64", "complex128")
for _name in _SHARED:
    globals()[_name] = getattr(_np, _name)
del _name

# what the package (the `cupy` of the tests) takes from here
__all__ = [*_PLAIN, "argsort", "sort", "repeat", "asarray", "array", "ascontiguousarray",
           "asnumpy", "where", "nonzero", "flatnonzero", "argwhere", "unique", "bincount",
           "result_type", "get_array_module", *_SHARED]
