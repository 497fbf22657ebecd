"""Tensor, Function and reverse-mode automatic differentiation.

A `Tensor` wraps an array (`.data`, NumPy or CuPy) and, when it was produced by a differentiable
operation, remembers how: `_ctx = (FunctionClass, ctx, inputs)`. `backward()` walks that graph
once, in reverse topological order, and calls each Function's `backward` to turn the gradient of
its output into gradients of its inputs (the chain rule).

Lesson 01 builds this up from a scalar micrograd-style value; this file is the real thing.
"""
import contextlib

import numpy as np

from . import backend

_grad_enabled = True


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
    """Scratch space a Function's forward leaves for its backward."""
    __slots__ = ("saved", "needs_input_grad", "__dict__")

    def __init__(self, needs_input_grad):
        self.saved = ()
        self.needs_input_grad = needs_input_grad

    def save_for_backward(self, *arrays):
        self.saved = arrays


class Function:
    """A differentiable operation. Subclasses write two static methods on raw arrays:

        forward(ctx, *inputs, **options) -> output array
        backward(ctx, grad_output) -> one gradient (or None) per positional input

    Positional inputs that are Tensors are graph inputs; anything else (a Python scalar, an
    index) is a constant and gets None. Gradients may have the broadcast shape of the output:
    the engine sums them back to each input's shape.
    """

    @staticmethod
    def forward(ctx, *inputs, **options):
        raise NotImplementedError

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs, **options):
        needs = tuple(isinstance(x, Tensor) and x.requires_grad for x in inputs)
        record = _grad_enabled and any(needs)
        ctx = Context(needs if record else None)
        arrays = [x.data if isinstance(x, Tensor) else x for x in inputs]
        out = Tensor.__new__(Tensor)
        data = cls.forward(ctx, *arrays, **options)
        if isinstance(data, np.generic):
            # NumPy reductions and x[i, j] return scalars, not 0-d arrays; a scalar would lose its
            # dtype in Tensor(...) (detach, comparisons) and cannot be updated in place.
            data = np.asarray(data)
        out.data = data
        out.grad = None
        out.requires_grad = record
        out._ctx = (cls, ctx, inputs) if record else None
        return out


def unbroadcast(grad, shape):
    """Sum a gradient over the axes that broadcasting added or stretched, back to `shape`.

    If y = x + b with x (B, T, C) and b (C,), then dL/db = sum over B and T of dL/dy.
    """
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if stretched:
        grad = grad.sum(axis=stretched, keepdims=True)
    return grad


def _topological_order(root):
    """Every tensor that requires grad and leads to `root`, each after all of its inputs.

    Iterative depth-first search: a deep graph (a long sequence, many layers) would exceed
    Python's recursion limit, and a tensor used twice must still be visited only once, after
    both of its consumers have handed it their gradient.
    """
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, inputs_done = stack.pop()
        if inputs_done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        if node._ctx is not None:
            for parent in node._ctx[2]:
                if isinstance(parent, Tensor) and parent.requires_grad and id(parent) not in visited:
                    stack.append((parent, False))
    return order


class Tensor:
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
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        return f"Tensor({backend.to_numpy(self.data)!r}{grad})"

    __hash__ = object.__hash__  # == builds a comparison tensor, so hash by identity explicitly

    def numpy(self):
        """The data as a NumPy array, from either device."""
        return backend.to_numpy(self.data)

    def item(self):
        return self.numpy().item()

    def tolist(self):
        return self.numpy().tolist()

    def to(self, device):
        """This tensor on `device` (the same tensor if it is already there). Leaves stay leaves."""
        if backend.check_device(device) == self.device:
            return self
        return Tensor(backend.to_device(self.data, device), requires_grad=self.requires_grad)

    def astype(self, dtype):
        return ops.Cast.apply(self, dtype=np.dtype(dtype))

    def float(self):
        return self.astype(np.float32)

    def double(self):
        return self.astype(np.float64)

    def detach(self):
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def zero_grad(self):
        self.grad = None

    # ---- autograd ----------------------------------------------------------------------------
    def backward(self, grad=None):
        """Accumulate d(self)/d(leaf) into the .grad of every leaf that requires grad.

        Gradients add up across calls until zeroed, as in PyTorch. Without `grad`, self must hold
        a single element (a loss) and the seed gradient is 1.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad: "
                               "create the inputs with requires_grad=True, outside no_grad()")
        xp = backend.array_module(self.data)
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() without a gradient needs a single-element tensor, "
                                   f"got shape {self.shape}: pass grad= or reduce to a scalar first")
            grad = xp.ones_like(self.data)
        else:
            grad = xp.asarray(grad.data if isinstance(grad, Tensor) else grad, dtype=self.dtype)
        grads = {id(self): grad}
        for node in reversed(_topological_order(self)):
            grad = grads.pop(id(node), None)
            if grad is None:
                continue
            if node._ctx is None:  # a leaf: keep its own copy, in its own dtype
                if node.grad is None:
                    node.grad = grad.astype(node.dtype, copy=True)
                else:  # cast first: a float64 gradient must not promote a float32 leaf's grad
                    node.grad = node.grad + grad.astype(node.dtype, copy=False)
                continue
            fn, ctx, inputs = node._ctx
            input_grads = fn.backward(ctx, grad)
            if not isinstance(input_grads, tuple):
                input_grads = (input_grads,)
            for parent, g in zip(inputs, input_grads):
                if g is None or not isinstance(parent, Tensor) or not parent.requires_grad:
                    continue
                g = unbroadcast(g, parent.shape)
                key = id(parent)
                grads[key] = g if key not in grads else grads[key] + g

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

    def __neg__(self):
        return ops.Neg.apply(self)

    def __getitem__(self, index):
        return ops.getitem(self, index)

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
    def sum(self, axis=None, keepdims=False):
        return ops.Sum.apply(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return ops.Mean.apply(self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims=False):
        return ops.Max.apply(self, axis=axis, keepdims=keepdims)

    def reshape(self, *shape):
        shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
        return ops.Reshape.apply(self, shape=tuple(shape))

    view = reshape

    def permute(self, *axes):
        axes = axes[0] if len(axes) == 1 and isinstance(axes[0], (tuple, list)) else axes
        return ops.Permute.apply(self, axes=tuple(axes))

    def transpose(self, axis0=-2, axis1=-1):
        """Swap two axes (PyTorch's meaning), the last two by default."""
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


from . import ops  # noqa: E402  (ops builds on Function and Tensor defined above)
