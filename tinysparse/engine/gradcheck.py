"""Gradient checking: compare backward() with central differences, element by element, in float64.

For a function f of tensors, contract its output with a fixed random weight w to get a scalar
L = sum(w * f(inputs)), so that one backward pass gives dL/dx for every input element x. Then, for
every element, nudge it by +eps and -eps and compare

    numeric  = (L(x + eps) - L(x - eps)) / (2 eps)        (error O(eps^2))
    analytic = x.grad

A random w (rather than all ones) catches backward passes that are right only on average.
"""
import numpy as np

from .backend import to_numpy
from .tensor import Tensor, no_grad


class GradcheckError(AssertionError):
    """The analytic and numeric gradients disagree; the message names where and by how much."""


def _scalar(fn, inputs, weight):
    out = fn(*inputs)
    return float((to_numpy(out.data).astype(np.float64) * weight).sum())


def gradcheck(fn, *inputs, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0):
    """Check fn's gradients with respect to every input that requires grad, on every element.

    Inputs must be float64 Tensors (float32 central differences are too coarse to tell a bug from
    rounding). Returns True, or raises GradcheckError naming the input, the element and both values.
    """
    for name, value, least in (("eps", eps, 0.0), ("atol", atol, 0.0), ("rtol", rtol, 0.0)):
        if not (np.isfinite(value) and (value > least if name == "eps" else value >= least)):
            raise ValueError(f"gradcheck {name} must be a finite number "
                             f"{'> 0' if name == 'eps' else '>= 0'}, got {value!r}")
    checked = [i for i, x in enumerate(inputs) if isinstance(x, Tensor) and x.requires_grad]
    if not checked:
        raise ValueError("gradcheck needs at least one input Tensor with requires_grad=True")
    for i in checked:
        if inputs[i].dtype != np.float64:
            raise ValueError(f"gradcheck input {i} is {inputs[i].dtype}: use float64 tensors "
                             f"(e.g. Tensor(np.random.randn(...)) keeps NumPy's float64)")

        if not inputs[i].data.flags.c_contiguous:
            inputs[i].data = np.ascontiguousarray(inputs[i].data)

    # Analytic gradients from one backward pass of L = sum(w * f).
    for i in checked:
        inputs[i].grad = None
    out = fn(*inputs)
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal(out.shape)
    out.backward(Tensor(weight.astype(out.dtype)))
    analytic = {i: (to_numpy(inputs[i].grad) if inputs[i].grad is not None
                    else np.zeros(inputs[i].shape)) for i in checked}

    # Numeric gradients, one element at a time, perturbing the data in place.
    worst = None  # (excess over tolerance, input, element index, analytic, numeric)
    with no_grad():
        for i in checked:
            data = inputs[i].data
            flat = data.reshape(-1)  # a view (inputs were made contiguous): writing flat[j] writes the input
            for j in range(flat.size):
                original = flat[j].item()
                flat[j] = original + eps
                plus = _scalar(fn, inputs, weight)
                flat[j] = original - eps
                minus = _scalar(fn, inputs, weight)
                flat[j] = original
                numeric = (plus - minus) / (2 * eps)
                a = analytic[i].reshape(-1)[j]
                excess = abs(a - numeric) - (atol + rtol * abs(numeric))
                if not excess <= 0 and (worst is None or not excess <= worst[0]):  # NaN counts as worst
                    worst = (excess, i, j, a, numeric)
    if worst is not None:
        _, i, j, a, numeric = worst
        shape = inputs[i].shape
        where = tuple(int(k) for k in np.unravel_index(j, shape))  # (2, 3), not np.int64s
        raise GradcheckError(
            f"gradient mismatch for input {i} (shape {shape}), worst at element {where}: "
            f"analytic {a:.8g}, numeric {numeric:.8g}, difference {abs(a - numeric):.3g}")
    return True
