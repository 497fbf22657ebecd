"""The stand-in's device array, `ndarray`: NumPy data in a type of its own, whose every read by
the host is counted (_ledger.py), and the wrapping of NumPy results into it."""
import builtins as _builtins
import operator

import numpy as _np

from ._ledger import _refuse, _sync, _upload


# ---- wrapping and unwrapping -------------------------------------------------------------------

def _wrap(x):
    """NumPy results as device arrays: arrays and NumPy scalars (CuPy's reductions give 0-d
    arrays, never scalars) become ndarray; tuples and lists are wrapped item by item."""
    if isinstance(x, _np.ndarray):
        return ndarray(x)
    if isinstance(x, _np.generic):
        return ndarray(_np.asarray(x))
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


def _unwrap(x):
    """Arguments for NumPy: device arrays become their NumPy data; a NumPy array is refused."""
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, _np.ndarray):
        _refuse(x)
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v) for v in x)
    return x


def _unwrap_kwargs(kwargs):
    return {k: _unwrap(v) for k, v in kwargs.items()}


def _is_bool_array(x):
    return isinstance(x, (_np.ndarray, ndarray)) and x.dtype == _np.bool_ and x.ndim > 0


def _index(key):
    """An index for NumPy: device arrays unwrapped, NumPy arrays and lists accepted (CuPy copies
    them to the device: an upload); a boolean array makes the result's size data: a sync."""
    parts = key if isinstance(key, tuple) else (key,)
    out = []
    for p in parts:
        if isinstance(p, ndarray):
            if _is_bool_array(p):
                _sync("boolean mask index")
            out.append(p._a)
        elif isinstance(p, (_np.ndarray, list)):
            arr = _np.asarray(p)
            _upload(arr)
            if _is_bool_array(arr):
                _sync("boolean mask index")
            out.append(arr)
        else:
            out.append(p)
    return tuple(out) if isinstance(key, tuple) else out[0]


# ---- the array ---------------------------------------------------------------------------------

def _binary(name):
    op = getattr(operator, name)

    def method(self, other):
        if isinstance(other, _np.ndarray):
            _refuse(other)
        if not isinstance(other, (ndarray, int, float, bool, complex, _np.generic)):
            return NotImplemented          # a Tensor's reflected operator takes over
        return _wrap(op(self._a, _unwrap(other)))
    method.__name__ = f"__{name}__"
    return method


def _reflected(name):
    op = getattr(operator, name)

    def method(self, other):
        if isinstance(other, _np.ndarray):
            _refuse(other)
        if not isinstance(other, (int, float, bool, complex, _np.generic)):
            return NotImplemented
        return _wrap(op(other, self._a))
    method.__name__ = f"__r{name}__"
    return method


def _inplace(name):
    op = getattr(operator, f"i{name.rstrip('_')}")

    def method(self, other):
        if isinstance(other, _np.ndarray):
            _refuse(other)
        if not isinstance(other, (ndarray, int, float, bool, complex, _np.generic)):
            return NotImplemented
        result = op(self._a, _unwrap(other))
        if result is not self._a:          # NumPy always updates in place; be sure
            raise AssertionError("in-place operation made a new array")
        return self
    method.__name__ = f"__i{name}__"
    return method


class ndarray:
    """A device array: NumPy data that the host may not read without it being counted."""
    __slots__ = ("_a", "__weakref__")
    __array_priority__ = 100                # below Tensor's 1000: Tensor's operators win

    def __init__(self, array):
        if not isinstance(array, _np.ndarray):
            raise TypeError("fake_cupy.ndarray wraps a NumPy array (use cupy.asarray)")
        self._a = array

    # ---- facts the host knows without asking the device --------------------------------------
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: ndarray(self._a.T))

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (ndarray(_np.asarray(self._a[i])) for i in range(len(self._a)))

    # ---- what makes the host wait ------------------------------------------------------------
    def get(self, stream=None, order="C", out=None):
        _sync(".get()")
        return self._a.copy()

    def item(self):
        _sync(".item()")
        return self._a.item()

    def tolist(self):
        _sync(".tolist()")
        return self._a.tolist()

    def __float__(self):
        _sync("float()")
        return float(self._a)

    def __int__(self):
        _sync("int()")
        return int(self._a)

    def __bool__(self):
        _sync("bool()")
        return bool(self._a)

    def __complex__(self):
        _sync("complex()")
        return complex(self._a)

    def __index__(self):
        _sync("operator.index")
        return operator.index(self._a.item() if self._a.ndim == 0 else self._a)

    def __repr__(self):
        _sync("repr()")
        return "fake_cupy." + repr(self._a)

    def __str__(self):
        _sync("str()")
        return str(self._a)

    def __format__(self, spec):
        _sync("format()")
        return format(self._a.item() if self._a.ndim == 0 else self._a, spec)

    def nonzero(self):
        _sync("nonzero")
        return _wrap(self._a.nonzero())

    # ---- what NumPy may not do with it -------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. Please use `.get()` "
                        "to construct a NumPy array explicitly. (CuPy stand-in)")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method != "__call__":
            raise TypeError(f"numpy.{ufunc.__name__}.{method} on a device array (CuPy stand-in)")
        args = [_unwrap(x) for x in inputs]          # a NumPy array refuses here, as in CuPy
        if _builtins.any(not isinstance(x, (ndarray, int, float, bool, complex, _np.generic))
               for x in inputs):
            return NotImplemented
        return _wrap(ufunc(*args, **_unwrap_kwargs(kwargs)))

    def __array_function__(self, func, types, args, kwargs):
        raise TypeError(f"numpy.{func.__name__}() was given a device array: call the array "
                        f"module's function instead (backend.array_module(a).{func.__name__}); "
                        f"the CuPy stand-in refuses NumPy functions on its arrays")

    # ---- indexing ----------------------------------------------------------------------------
    def __getitem__(self, key):
        return _wrap(self._a[_index(key)])

    def __setitem__(self, key, value):
        if isinstance(value, _np.ndarray):
            _refuse(value)
        self._a[_index(key)] = _unwrap(value)

    # ---- methods -----------------------------------------------------------------------------
    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        return ndarray(self._a.astype(dtype, copy=copy))

    def copy(self, order="C"):
        return ndarray(self._a.copy(order=order))

    def reshape(self, *shape, order="C"):
        return ndarray(self._a.reshape(*shape, order=order))

    def view(self, dtype=None):
        return ndarray(self._a.view() if dtype is None else self._a.view(dtype))

    def fill(self, value):
        self._a.fill(_unwrap(value))

    def argsort(self, axis=-1, kind=None):
        from ._functions import argsort     # here, not on top: _functions imports this module
        return argsort(self, axis, kind)

    def _method(name):
        def method(self, *args, **kwargs):
            return _wrap(getattr(self._a, name)(*_unwrap(args), **_unwrap_kwargs(kwargs)))
        method.__name__ = name
        return method

    for _name in ("transpose", "swapaxes", "ravel", "flatten", "squeeze", "sum", "mean", "max",
                  "min", "argmax", "argmin", "all", "any", "cumsum", "prod", "std", "var",
                  "clip", "dot", "take", "round", "conj"):
        locals()[_name] = _method(_name)
    del _name, _method

    # ---- operators ---------------------------------------------------------------------------
    for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and_",
                  "or_", "xor", "lshift", "rshift", "lt", "le", "gt", "ge", "eq", "ne"):
        _dunder = _name.rstrip("_")
        locals()[f"__{_dunder}__"] = _binary(_name)
    for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and_",
                  "or_", "xor", "lshift", "rshift"):
        _dunder = _name.rstrip("_")
        locals()[f"__r{_dunder}__"] = _reflected(_name)
        locals()[f"__i{_dunder}__"] = _inplace(_name)
    del _name, _dunder
    __hash__ = None

    def __neg__(self):
        return ndarray(-self._a)

    def __pos__(self):
        return ndarray(+self._a)

    def __abs__(self):
        return ndarray(_builtins.abs(self._a))

    def __invert__(self):
        return ndarray(~self._a)


ndarray.__module__ = "cupy"        # what tinysparse.engine.backend recognises a CuPy array by
ndarray.__qualname__ = "ndarray"
