"""A strict CuPy stand-in backed by NumPy: tinysparse's GPU path, run and checked on a CPU.

The `fake_gpu` fixture (tests/conftest.py) puts this module in sys.modules as `cupy` (and
`cupyx`), so `tinysparse.engine.backend` imports it and takes it for a GPU. Its arrays are NumPy
arrays in a wrapper of their own type, `ndarray`, that behaves like CuPy's where correctness
depends on it:

- a distinct type: `isinstance(a, numpy.ndarray)` is False, and the library must ask
  `backend.array_module` for the right functions;
- a NumPy array passed into one of its functions or operators raises TypeError, as CuPy does
  ("Unsupported type <class 'numpy.ndarray'>"); index arrays are the exception, as in CuPy
  (`a[numpy_index]` copies the index to the device: counted as an upload);
- NumPy functions refuse its arrays: `__array__` raises (CuPy: "Implicit conversion to a NumPy
  array is not allowed"), and so does every NumPy array function (`np.sum(a)`: stricter than
  CuPy, which hands those to itself; library code must call `xp.sum`). NumPy ufuncs on its
  arrays and scalars compute on the device, as CuPy's `__array_ufunc__` does
  (`np.float32(2) * a`);
- every way the host waits for the device is COUNTED as a synchronisation (`LEDGER.syncs`, each
  with the library line that caused it), or raises DeviceSynchronized inside
  `cupyx.allow_synchronize(False)` (CuPy's own switch): `float()`, `int()`, `bool()`,
  `operator.index`, `.item()`, `.tolist()`, `.get()`, `asnumpy`, printing, and every operation
  whose result's SIZE depends on the data (a boolean mask in an index, `nonzero`, `flatnonzero`,
  `argwhere`, one-argument `where`, `unique`; `bincount`, which CuPy implements with two reads:
  a check for negative values and the maximum), and an explicit `Device().synchronize()`;
- copies from the host (`asarray` of NumPy data or a list) are counted as uploads
  (`LEDGER.uploads`): not a wait, but traffic a training step should not repeat.

What it does not model: timing and streams (everything runs at once), memory limits, CuPy's
handful of semantic differences from NumPy beyond the above (its sort is always stable, as
NumPy's kind='stable' is), and the CUDA kernels' zero-copy path (cuda_kernels/ needs a real GPU
or Numba's simulator on NumPy arrays).
"""
import builtins as _builtins
import contextlib
import operator
import os
import sys
import types

import numpy as _np

__version__ = "0+numpy-stand-in"

_HERE = os.path.abspath(__file__)


class DeviceSynchronized(RuntimeError):
    """The host waited for the device inside allow_synchronize(False) (cupyx's exception)."""


class Ledger:
    """What the host asked of the device since the last reset."""

    def __init__(self):
        self.allowed = True
        self.reset()

    def reset(self):
        self.syncs = []       # (kind, where)
        self.uploads = []     # (bytes, where)

    def where_counts(self):
        """{(kind, where): count} of the syncs, for messages and reports."""
        out = {}
        for key in self.syncs:
            out[key] = out.get(key, 0) + 1
        return out

    def report(self):
        return "\n".join(f"{n:4d}  {kind:<18} {where}"
                         for (kind, where), n in sorted(self.where_counts().items(),
                                                        key=lambda kv: -kv[1]))


LEDGER = Ledger()


_PASS_THROUGH = (os.sep + os.path.join("tinysparse", "engine", "backend.py"),)


def _caller():
    """'path:line (function)' of the line that asked: the first frame outside this file and the
    device switch's helpers (backend.to_numpy reads for its caller)."""
    frame = sys._getframe(1)
    while frame is not None and (os.path.abspath(frame.f_code.co_filename) == _HERE
                                 or frame.f_code.co_filename.endswith(_PASS_THROUGH)):
        frame = frame.f_back
    if frame is None:
        return "?"
    path = frame.f_code.co_filename
    for root in ("tinysparse", "tests", "cuda_kernels"):
        marker = os.sep + root + os.sep
        if marker in path:
            path = root + os.sep + path.split(marker, 1)[1]
            break
    return f"{path}:{frame.f_lineno} ({frame.f_code.co_name})"


def _sync(kind):
    where = _caller()
    if not LEDGER.allowed:
        raise DeviceSynchronized(f"the host waited for the device ({kind}) at {where}, inside "
                                 f"cupyx.allow_synchronize(False)")
    LEDGER.syncs.append((kind, where))


def _upload(array):
    LEDGER.uploads.append((int(_np.asarray(array).nbytes), _caller()))


def _refuse(value):
    raise TypeError(f"Unsupported type {type(value)} (the CuPy stand-in refuses a NumPy array "
                    f"where CuPy would: move it to the device with xp.asarray first)")


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


# ---- the module's functions --------------------------------------------------------------------

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
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else _np


for _name in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
              "uint16", "uint32", "uint64", "bool_", "intp", "dtype", "iinfo", "finfo",
              "inf", "nan", "pi", "e", "newaxis", "integer", "floating", "number", "generic",
              "complex64", "complex128"):
    globals()[_name] = getattr(_np, _name)
del _name


# ---- cupy.random (CuPy's own generator: its state cannot be saved, so tinysparse does not use it)

_random_state = [_np.random.default_rng(0)]
random = types.SimpleNamespace(
    seed=lambda seed=None: _random_state.__setitem__(0, _np.random.default_rng(seed)),
    random=lambda size=None, dtype=float: ndarray(_np.asarray(
        _random_state[0].random(size, dtype=dtype))),
)


# ---- cupy.cuda and cupyx -----------------------------------------------------------------------

class _Device:
    def __init__(self, device=None):
        self.id = 0

    def synchronize(self):
        _sync("Device().synchronize()")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    compute_capability = "90"


class _Event:
    def __init__(self, *args, **kwargs):
        self.recorded = False

    def record(self, stream=None):
        self.recorded = True

    def synchronize(self):
        _sync("Event.synchronize()")


def _elapsed_time(start, end):
    return 0.0


def _device_properties(device):
    return {"name": b"CuPy stand-in (NumPy)", "totalGlobalMem": 0, "major": 0, "minor": 0}


cuda = types.SimpleNamespace(
    is_available=lambda: True,
    Device=_Device,
    Event=_Event,
    get_elapsed_time=_elapsed_time,
    runtime=types.SimpleNamespace(getDeviceProperties=_device_properties,
                                  deviceSynchronize=lambda: _sync("deviceSynchronize()"),
                                  runtimeGetVersion=lambda: 0, driverGetVersion=lambda: 0),
)


@contextlib.contextmanager
def _allow_synchronize(allow):
    before, LEDGER.allowed = LEDGER.allowed, bool(allow)
    try:
        yield
    finally:
        LEDGER.allowed = before


cupyx = types.ModuleType("cupyx")
cupyx.allow_synchronize = _allow_synchronize
cupyx.DeviceSynchronized = DeviceSynchronized
