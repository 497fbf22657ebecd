"""How a Tensor meets Python and NumPy: truth value, numbers, formatting, NumPy's ufuncs and functions.

Python (PyTorch's rules). `bool(t)`, `float(t)`, `int(t)`, `f"{t:.3f}"` and `operator.index(t)`
need a one-element Tensor; anything bigger is a clear error. Without `__bool__`, Python would fall
back to `__len__`, and `assert a == b` would pass for any two tensors of two elements.

NumPy (NEP 13 and NEP 18: NumPy hands a call with a Tensor argument to the Tensor):
1. a ufunc with a differentiable twin is that twin: `np.exp(t)` is `t.exp()` and `ndarray + t`
   is `t.__radd__(ndarray)`, a Tensor in the graph (add, subtract, multiply, divide, negative,
   power, matmul, exp, log, sqrt, tanh; the comparisons give boolean Tensors, as the operators do);
2. so is an array function with a twin: np.sum, mean, max/amax, min/amin, reshape, transpose,
   concatenate, stack, where (three arguments);
3. any other ufunc or function works on the data and returns NumPy's result (arrays, outside the
   graph), unless that would silently lose a gradient: a floating-point result from a Tensor that
   requires grad is a TypeError naming the fix (use Tensor ops, or pass t.detach().numpy()).
`np.asarray(t)` gives the data of a CPU tensor (an explicit conversion, as t.numpy()); a CUDA
tensor must be copied to the host explicitly with t.numpy().
"""
import numpy as np

from . import backend


class TensorProtocols:
    """The protocol methods of Tensor (tensor.py inherits them); `self` is a Tensor."""

    def _one_element(self, what, fix):
        if self.data.size != 1:
            raise TypeError(f"{what} needs a one-element Tensor, this one has shape "
                            f"{tuple(self.shape)}: {fix}")
        return self.data.reshape(()).item()

    def __bool__(self):
        if self.data.size != 1:
            raise RuntimeError(
                f"the truth value of a Tensor with {self.data.size} elements is ambiguous: "
                f"use (a == b).all() or .any(), e.g. `assert (a == b).all()`")
        return bool(self.data.reshape(()).item())

    def __float__(self):
        return float(self._one_element("float()", "use .tolist() or .numpy() for many values"))

    def __int__(self):
        return int(self._one_element("int()", "use .tolist() or .numpy() for many values"))

    def __index__(self):
        if self.dtype.kind not in "biu":
            raise TypeError(f"only an integer Tensor can be an index, this one is {self.dtype}: "
                            f"use int(t) to truncate a float")
        return int(self._one_element("an index", "index with the Tensor itself (x[t])"))

    def __format__(self, spec):
        if not spec:
            return str(self)
        return format(self._one_element(f"format spec {spec!r}", "format t.tolist() instead"),
                      spec)

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d Tensor: use t.item()")
        return (self[i] for i in range(len(self)))

    def __contains__(self, value):
        return bool((self == value).any())

    def __array__(self, dtype=None, copy=None):
        if backend.is_cuda_array(self.data):
            raise TypeError("a CUDA Tensor does not become a NumPy array implicitly: "
                            "call t.numpy() (an explicit copy to the host)")
        if copy:
            return np.array(self.data, dtype=dtype, copy=True)
        return np.asarray(self.data, dtype=dtype)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method == "__call__" and not kwargs:
            twin = _ufunc_twins().get(ufunc)
            if twin is not None:
                return twin(*inputs)
        name = ufunc.__name__ + ("" if method == "__call__" else f".{method}")
        return _on_data(name, getattr(ufunc, method), inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        twin = _function_twins().get(func)
        if twin is not None:
            try:
                return twin(*args, **kwargs)
            except _NoTwin:
                pass
        return _on_data(func.__name__, func, args, kwargs)


class _NoTwin(Exception):
    """This call of a NumPy function is one its twin does not cover: work on the data instead."""


def _on_data(name, fn, args, kwargs):
    """fn on the data of every Tensor argument; refused where a gradient would be lost."""
    from .tensor import Tensor
    tensors = []
    plain_args, plain_kwargs = _unwrap(args, tensors, Tensor), _unwrap(kwargs, tensors, Tensor)
    needs_grad = any(t.requires_grad for t in tensors)
    if needs_grad and _floating(plain_kwargs.get("out")):  # refuse before writing into `out`
        _refuse(name)
    result = fn(*plain_args, **plain_kwargs)
    if needs_grad and _floating(result):
        _refuse(name)
    return result


def _refuse(name):
    raise TypeError(
        f"np.{name}() on a Tensor that requires grad would return a NumPy array cut from the "
        f"graph, losing the gradient: use Tensor operations (t.exp(), t.sum(), ts.where, ...), "
        f"or np.{name}(t.detach().numpy()) for the values alone")


def _unwrap(value, tensors, Tensor):
    """value with every Tensor inside (lists, tuples, dicts) replaced by its data."""
    if isinstance(value, Tensor):
        tensors.append(value)
        return value.data
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v, tensors, Tensor) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v, tensors, Tensor) for k, v in value.items()}
    return value


def _floating(result):
    if isinstance(result, (list, tuple)):
        return any(_floating(r) for r in result)
    kind = getattr(getattr(result, "dtype", None), "kind", None)
    return kind in ("f", "c") or isinstance(result, (float, complex))


_twins = {}


def _ufunc_twins():
    if "ufunc" not in _twins:
        from . import ops
        from .tensor import Tensor

        def power(a, b):
            return ops.pow(a, b) if isinstance(a, Tensor) else ops.rpow(a, b)

        def compare(op, flipped):
            return lambda a, b: getattr(a, op)(b) if isinstance(a, Tensor) else getattr(b, flipped)(a)

        _twins["ufunc"] = {
            np.add: ops.Add.apply, np.subtract: ops.Sub.apply, np.multiply: ops.Mul.apply,
            np.true_divide: ops.Div.apply, np.negative: ops.Neg.apply, np.matmul: ops.MatMul.apply,
            np.power: power, np.exp: ops.Exp.apply, np.log: ops.Log.apply,
            np.sqrt: ops.Sqrt.apply, np.tanh: ops.Tanh.apply,
            np.less: compare("__lt__", "__gt__"), np.less_equal: compare("__le__", "__ge__"),
            np.greater: compare("__gt__", "__lt__"), np.greater_equal: compare("__ge__", "__le__"),
            np.equal: compare("__eq__", "__eq__"), np.not_equal: compare("__ne__", "__ne__"),
        }
    return _twins["ufunc"]


def _function_twins():
    if "function" not in _twins:
        from . import ops

        def reshape(a, shape=None, *args, **kwargs):
            if args or kwargs or shape is None:
                raise _NoTwin
            return ops.reshape(a, (shape,) if np.isscalar(shape) else shape)

        def transpose(a, axes=None):
            return ops.permute(a, tuple(reversed(range(np.ndim(a.data)))) if axes is None else axes)

        def join(op):
            def twin(arrays, axis=0):
                if axis is None:  # NumPy flattens first: no twin
                    raise _NoTwin
                return op(list(arrays), axis=axis)
            return twin

        def where(condition, *branches):
            if len(branches) != 2:
                raise _NoTwin
            return ops.where(condition, *branches)

        def reduction(op):
            def twin(a, axis=None, *args, keepdims=False, **kwargs):
                if args or kwargs:  # dtype=, out=, initial=, where=: no twin
                    raise _NoTwin
                return op(a, axis, keepdims)
            return twin

        _twins["function"] = {
            np.sum: reduction(ops.sum), np.mean: reduction(ops.mean),
            np.max: reduction(ops.max), np.amax: reduction(ops.max),
            np.min: reduction(ops.min), np.amin: reduction(ops.min),
            np.reshape: reshape, np.transpose: transpose, np.concatenate: join(ops.concatenate),
            np.stack: join(ops.stack), np.where: where,
        }
    return _twins["function"]
