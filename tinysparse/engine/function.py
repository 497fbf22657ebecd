"""Function: how a differentiable operation records itself in the graph, and grad mode.

A Function's forward runs on raw arrays; `apply` wraps the result in a Tensor and, when some input
requires grad and grad mode is on, remembers `_ctx = (FunctionClass, ctx, inputs)` on it. The
engine (autograd.py) later walks those records backwards and calls each Function's `backward`.
`no_grad()` turns the recording off: a forward then costs only its arithmetic.

dtypes, the rule `apply` enforces for every Function (PyTorch's habits, stated once):
- Python scalars and NumPy scalars never promote: `x32 * 0.5` and `x32 * np.float64(0.5)` stay
  float32 (NumPy 2 already treats Python scalars so; NumPy scalars are turned into Python ones).
- Arrays and Tensors of different floating dtypes are an error, never a silent promotion: a
  float64 array fed to a float32 model would otherwise turn the whole forward into float64.
  The message names the fix (t.float(), t.double(), array.astype(np.float32)).
- Arithmetic (Functions with `integers_take_float_dtype = True`: +, -, *, /, @) casts an integer
  array operand to the floating operand's dtype, as PyTorch does (NumPy would make int64 with
  float32 a float64).
- float16 (any float narrower than float32) is computed in float32 inside, and the output and the
  gradients are rounded back to float16 once, as PyTorch does for half precision on the CPU: no
  intermediate (a square, an exp, a sum) can overflow float16's 65504 or lose its few digits.
  A Function that is exact in any dtype may opt out (`computes_half_in_float32 = False`: Cast).
"""
import contextlib

import numpy as np

_grad_enabled = True
# The observer of every apply and every backward call (the efficiency ledger sets it while it
# counts; the engine never imports who observes). None: the only cost is this one check.
_observer = None


def set_observer(observer):
    """Install `observer` and return the previous one (None removes it). While installed, each
    apply calls observer.on_forward(cls, ctx, inputs, arrays, output_array, options) after the
    forward, and the backward engine calls observer.on_backward(fn, ctx, grad, input_grads)
    after each node's backward. tinysparse.ledger.count() is the one user."""
    global _observer
    previous, _observer = _observer, observer
    return previous


def is_grad_enabled():
    return _grad_enabled


@contextlib.contextmanager
def no_grad():
    """Inside this block no graph is recorded: forward passes cost only their arithmetic."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


class Context:
    """Scratch space a Function's forward leaves for its backward.

    `half` is the float16 dtype of the inputs when apply computed in float32 for them (None
    otherwise): the engine then hands backward a float32 gradient and rounds its results back.
    """
    __slots__ = ("saved", "needs_input_grad", "half", "__dict__")

    def __init__(self, needs_input_grad):
        self.saved = ()
        self.needs_input_grad = needs_input_grad
        self.half = None

    def save_for_backward(self, *arrays):
        self.saved = arrays


class Function:
    """A differentiable operation. Subclasses write two static methods on raw arrays:

        forward(ctx, *inputs, **options) -> output array
        backward(ctx, grad_output) -> one gradient (or None) per positional input

    Positional inputs that are Tensors are graph inputs; anything else (a Python scalar, an
    index) is a constant and gets None. Gradients may have the broadcast shape of the output:
    the engine sums them back to each input's shape. The dtype rules of the module docstring
    hold for every positional input.

    new_grads = True is a promise about backward: every gradient it returns is a NEW array that
    nothing else references (not grad_output or a view of it, not a saved array, not another
    returned gradient). The engine may then keep such a gradient as a leaf's .grad without
    copying it. Leave it False (the safe default) whenever in doubt.
    """
    new_grads = False
    integers_take_float_dtype = False
    computes_half_in_float32 = True

    @staticmethod
    def forward(ctx, *inputs, **options):
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs, **options):
        if _grad_enabled:
            needs = tuple(isinstance(x, Tensor) and x.requires_grad for x in inputs)
            record = any(needs)
        else:                                  # no_grad (sampling): nothing to ask the inputs
            needs, record = None, False
        ctx = Context(needs if record else None)
        arrays = [x.data if isinstance(x, Tensor) else x for x in inputs]
        dtype = _float_dtype(cls, arrays)
        if dtype is not None and dtype.itemsize < 4 and cls.computes_half_in_float32:
            ctx.half = dtype
            arrays = [a.astype(np.float32) if getattr(a, "dtype", None) == dtype else a
                      for a in arrays]
        out = Tensor.__new__(Tensor)
        data = cls.forward(ctx, *arrays, **options)
        if isinstance(data, np.generic):
            # NumPy reductions and x[i, j] return scalars, not 0-d arrays; a scalar would lose its
            # dtype in Tensor(...) (detach, comparisons) and cannot be updated in place.
            data = np.asarray(data)
        if ctx.half is not None and data.dtype == np.float32:
            data = data.astype(ctx.half)
        out.data = data
        out.grad = None
        out.requires_grad = record
        out._ctx = (cls, ctx, inputs) if record else None
        if _observer is not None:
            _observer.on_forward(cls, ctx, inputs, arrays, data, options)
        return out


_PLAIN = (float, int, bool, type(None), str, tuple, slice)   # never arrays: skipped at once


def _float_dtype(cls, arrays):
    """The one floating dtype of the array inputs (None if there is none), after the module's
    rules: NumPy scalars become Python scalars (in place in `arrays`), a mix of floating dtypes
    raises, integer arrays of arithmetic take the floating dtype. Called by every apply: kept lean."""
    dtype, integers = None, False
    for i, a in enumerate(arrays):
        if a.__class__ in _PLAIN:
            continue
        dt = getattr(a, "dtype", None)
        if dt is None:
            continue
        kind = dt.kind
        if kind not in "fiub":
            continue
        if isinstance(a, np.generic):      # a NumPy scalar is as weak as a Python one
            arrays[i] = a.item()
        elif kind != "f":
            integers = True
        elif dtype is None:
            dtype = dt
        elif dt is not dtype and dt != dtype:
            raise TypeError(
                f"{cls.__name__} got {dtype} and {dt} inputs: tinysparse never promotes "
                f"silently; cast one side explicitly (t.float() / t.double() on a Tensor, "
                f"array.astype(np.float32) on an array)")
    if integers and dtype is not None and cls.integers_take_float_dtype:
        for i, a in enumerate(arrays):
            kind = getattr(getattr(a, "dtype", None), "kind", None)
            if kind in ("i", "u", "b") and np.promote_types(a.dtype, dtype) != dtype:
                arrays[i] = a.astype(dtype)
    return dtype


from .tensor import Tensor  # noqa: E402  (tensor.py imports this module; Tensor is needed only at call time)
