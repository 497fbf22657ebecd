"""Function: how a differentiable operation records itself in the graph, and grad mode.

A Function's forward runs on raw arrays; `apply` wraps the result in a Tensor and, when some input
requires grad and grad mode is on, remembers `_ctx = (FunctionClass, ctx, inputs)` on it. The
engine (autograd.py) later walks those records backwards and calls each Function's `backward`.
`no_grad()` turns the recording off: a forward then costs only its arithmetic.
"""
import contextlib

import numpy as np

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

    new_grads = True is a promise about backward: every gradient it returns is a NEW array that
    nothing else references (not grad_output or a view of it, not a saved array, not another
    returned gradient). The engine may then keep such a gradient as a leaf's .grad without
    copying it. Leave it False (the safe default) whenever in doubt.
    """
    new_grads = False

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


from .tensor import Tensor  # noqa: E402  (tensor.py imports this module; Tensor is needed only at call time)
