"""Tensor: an array with an optional gradient, and the operators that build the graph.

A `Tensor` wraps an array (`.data`, NumPy or CuPy) and, when it was produced by a differentiable
operation, remembers how: `_ctx = (FunctionClass, ctx, inputs)` (function.py records it).
`backward()` hands the graph to the engine (autograd.py), which walks it once, in reverse
topological order, and calls each Function's `backward` (the chain rule).

Lesson 01 builds this up from a scalar micrograd-style value; these three files are the real thing.
Everything the engine is made of is importable from here too (Function, no_grad, unbroadcast, ...).

Python's and NumPy's protocols follow PyTorch where Python consults them: `bool(t)`, `float(t)`,
`int(t)`, `f"{t:.3f}"` and `operator.index(t)` need a single element (a clear error otherwise, so
`assert a == b` on two-element tensors raises instead of passing); NumPy functions on a Tensor
follow interop.py's rule (a Tensor when there is a differentiable twin, else NumPy data, never a
silent cut of the graph).
"""
import numpy as np

from . import backend
from .interop import TensorProtocols
from .spelling import normalize_axes


class Tensor(TensorProtocols):
    """An n-dimensional array with an optional gradient. float32 by default.

    `Tensor(np_array)` keeps the array's dtype (float64 stays float64 for gradchecks);
    Python scalars and lists become float32. `.data` is the array itself, `.grad` an array of the
    same shape once backward has reached this tensor.
    """
    __array_priority__ = 1000  # ndarray + Tensor calls Tensor.__radd__, not NumPy's elementwise add

    def __init__(self, data, requires_grad=False, dtype=None, device=None):
        if isinstance(data, Tensor):
            data = data.data
        if backend.is_cuda_array(data) or isinstance(data, np.ndarray):
            xp = backend.array_module(data)
            array = data if dtype is None else data.astype(dtype, copy=False)
        else:  # Python scalar, list, NumPy scalar: float32 unless told otherwise
            xp = np
            array = np.asarray(data, dtype=dtype or np.float32)
        if array.dtype.kind not in "biuf":
            raise TypeError(f"a Tensor holds bool, integer or floating data, not {array.dtype}: "
                            f"convert it first (np.asarray(data, dtype=np.float32))")
        if requires_grad and array.dtype.kind != "f":
            raise TypeError(f"only floating-point tensors can require grad, this one is "
                            f"{array.dtype}: pass dtype=np.float32 (or convert the data)")
        if device is not None:
            array = backend.to_device(array, backend.check_device(device))
        elif xp is np and backend.default_device() != "cpu":
            array = backend.to_device(array, backend.default_device())
        self.data = array
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._ctx = None

    # ---- array facts -------------------------------------------------------------------------
    @property
    def shape(self):
        return self.data.shape

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self):
        return self.data.size

    @property
    def device(self):
        return backend.device_of(self.data)

    @property
    def is_leaf(self):
        return self._ctx is None

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of a 0-d Tensor: it has no first axis; use t.item() or t.numel()")
        return len(self.data)

    def numel(self):
        """The number of elements (PyTorch's name for .size)."""
        return self.data.size

    def dim(self):
        """The number of axes (PyTorch's name for .ndim)."""
        return self.data.ndim

    def all(self, axis=None, keepdims=False):
        """True where every element is nonzero (a boolean Tensor, outside the graph)."""
        return _bool_tensor(self.data.all(axis=axis, keepdims=keepdims))

    def any(self, axis=None, keepdims=False):
        """True where some element is nonzero (a boolean Tensor, outside the graph)."""
        return _bool_tensor(self.data.any(axis=axis, keepdims=keepdims))

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({backend.to_numpy(self.data)!r}{grad})"

    __hash__ = object.__hash__  # == builds a comparison tensor, so hash by identity explicitly

    def numpy(self):
        """The data as a NumPy array, from either device."""
        return backend.to_numpy(self.data)

    def item(self):
        """The single element as a Python number."""
        return self._one_element("item()", "use .tolist() for many values")

    def tolist(self):
        return self.numpy().tolist()

    def to(self, device):
        """This tensor on `device` (the same tensor if it is already there). Leaves stay leaves."""
        if backend.check_device(device) == self.device:
            return self
        return Tensor(backend.to_device(self.data, device), requires_grad=self.requires_grad)

    def astype(self, dtype):
        """This tensor in another dtype; differentiable between floating dtypes. A cast to an
        integer or bool dtype is not (its result is outside the graph, as in PyTorch)."""
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            return Tensor(self.data.astype(dtype))
        return ops.Cast.apply(self, dtype=dtype)

    def float(self):
        return self.astype(np.float32)

    def double(self):
        return self.astype(np.float64)

    def detach(self):
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def clone(self):
        """A copy of the data that stays in the graph (the gradient passes through)."""
        return ops.Clone.apply(self)

    def zero_grad(self):
        self.grad = None

    # ---- autograd ----------------------------------------------------------------------------
    def backward(self, grad=None, retain_graph=False, *, gradient=None):
        """Accumulate d(self)/d(leaf) into the .grad of every leaf that requires grad.

        Gradients add up across calls until zeroed, as in PyTorch. Without `grad` (PyTorch's
        `gradient=`), self must hold a single element (a loss) and the seed gradient is 1. The
        graph is freed as backward walks it; a second backward through it is an error unless the
        first one was given retain_graph=True. The engine is autograd.backward.
        """
        if gradient is not None:
            if grad is not None:
                raise TypeError("give grad= or gradient= (two names for one argument), not both")
            grad = gradient
        autograd.backward(self, grad, retain_graph=retain_graph)

    # ---- operators ---------------------------------------------------------------------------
    def __add__(self, other):
        return ops.Add.apply(self, other)

    def __radd__(self, other):
        return ops.Add.apply(self, other)

    def __sub__(self, other):
        return ops.Sub.apply(self, other)

    def __rsub__(self, other):
        return ops.Sub.apply(other, self)

    def __mul__(self, other):
        return ops.Mul.apply(self, other)

    def __rmul__(self, other):
        return ops.Mul.apply(self, other)

    def __truediv__(self, other):
        return ops.Div.apply(self, other)

    def __rtruediv__(self, other):
        return ops.Div.apply(other, self)

    def __matmul__(self, other):
        return ops.MatMul.apply(self, other)

    def __rmatmul__(self, other):
        return ops.MatMul.apply(other, self)

    def __pow__(self, exponent):
        return ops.pow(self, exponent)

    def __rpow__(self, base):
        return ops.rpow(base, self)

    def __neg__(self):
        return ops.Neg.apply(self)

    def __getitem__(self, index):
        return ops.getitem(self, index)

    def __setitem__(self, index, value):
        raise TypeError("a Tensor is not changed in place (the graph may hold its data): build a "
                        "new one, e.g. t.masked_fill(mask, value) or ts.where(mask, value, t); "
                        "or write to t.data for an array outside the graph")

    # Comparisons are not differentiable: they return boolean tensors outside the graph.
    def __lt__(self, other):
        return _bool_tensor(self.data < _raw(other))

    def __le__(self, other):
        return _bool_tensor(self.data <= _raw(other))

    def __gt__(self, other):
        return _bool_tensor(self.data > _raw(other))

    def __ge__(self, other):
        return _bool_tensor(self.data >= _raw(other))

    def __eq__(self, other):
        return _bool_tensor(self.data == _raw(other))

    def __ne__(self, other):
        return _bool_tensor(self.data != _raw(other))

    # ---- methods that mirror NumPy / PyTorch -------------------------------------------------
    # axis= and dim=, keepdims= and keepdim= are two spellings of one argument (spelling.py)
    def sum(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        return ops.sum(self, axis, keepdims, dim=dim, keepdim=keepdim)

    def mean(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        return ops.mean(self, axis, keepdims, dim=dim, keepdim=keepdim)

    def max(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        """Values (axis=, NumPy); (values, indices) with dim= (PyTorch's torch.max(x, dim))."""
        return ops.max(self, axis, keepdims, dim=dim, keepdim=keepdim)

    def min(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        """Values (axis=, NumPy); (values, indices) with dim= (PyTorch's torch.min(x, dim))."""
        return ops.min(self, axis, keepdims, dim=dim, keepdim=keepdim)

    def argmax(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        return ops.argmax(self, axis, keepdims, dim=dim, keepdim=keepdim)

    def argmin(self, axis=None, keepdims=False, *, dim=None, keepdim=None):
        return ops.argmin(self, axis, keepdims, dim=dim, keepdim=keepdim)

    def unsqueeze(self, dim):
        return ops.unsqueeze(self, dim)

    def squeeze(self, dim=None):
        return ops.squeeze(self, dim)

    def flatten(self, start_dim=0, end_dim=-1):
        return ops.flatten(self, start_dim, end_dim)

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return ops.Reshape.apply(self, shape=tuple(shape))

    view = reshape

    def permute(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        return ops.Permute.apply(self, axes=tuple(axes))

    def transpose(self, axis0=-2, axis1=-1):
        """Swap two axes (PyTorch's meaning), the last two by default."""
        axis0, axis1 = (normalize_axes(a, self.ndim, self.shape)[0] for a in (axis0, axis1))
        axes = list(range(self.ndim))
        axes[axis0], axes[axis1] = axes[axis1], axes[axis0]
        return ops.Permute.apply(self, axes=tuple(axes))

    @property
    def T(self):
        return ops.Permute.apply(self, axes=tuple(reversed(range(self.ndim))))

    def exp(self):
        return ops.Exp.apply(self)

    def log(self):
        return ops.Log.apply(self)

    def sqrt(self):
        return ops.Sqrt.apply(self)

    def tanh(self):
        return ops.Tanh.apply(self)

    def relu(self):
        return ops.Relu.apply(self)

    def sigmoid(self):
        return ops.Sigmoid.apply(self)

    def broadcast_to(self, shape):
        return ops.BroadcastTo.apply(self, shape=tuple(shape))

    def masked_fill(self, mask, value):
        return ops.masked_fill(self, mask, value)


def _raw(x):
    return x.data if isinstance(x, Tensor) else x


def _bool_tensor(result):
    """A comparison's result as a boolean Tensor. Comparing 0-d arrays gives a NumPy bool scalar,
    which Tensor() would turn into float32 like any scalar: make it a 0-d array first."""
    return Tensor(backend.array_module(result).asarray(result))


# The engine's pieces, defined in their own modules and re-exported here: function.py and
# autograd.py need Tensor, so they are imported after it (the cycle is safe in either order).
from .function import Context, Function, is_grad_enabled, no_grad  # noqa: E402,F401
from .autograd import _topological_order, unbroadcast  # noqa: E402,F401
from . import autograd, ops  # noqa: E402  (ops builds on Function and Tensor)
