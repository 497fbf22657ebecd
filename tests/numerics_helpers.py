"""Shared by the finiteness tests (issue 11, kind 1: test_numerics_examples.py,
test_numerics_properties.py, test_numerics_float16.py): the float dtypes checked, NumPy's error
flags raised inside them, the dtype's largest finite value, and an op's output with its input
gradients. Not a test module: nothing here is collected.
"""
import numpy as np

from tinysparse import Tensor

FLOATS = [np.float32, np.float64]
RAISE = dict(over="raise", invalid="raise", divide="raise", under="ignore")


def big(dtype):
    return float(np.finfo(dtype).max)


def grad_of(fn, *values, dtype=np.float32, seed=None):
    """(output, [input gradients]) of fn on float `values`; the backward seed is ones or random."""
    inputs = [Tensor(np.asarray(v, dtype=dtype), requires_grad=True) for v in values]
    with np.errstate(**RAISE):
        out = fn(*inputs)
        w = (np.ones(out.shape) if seed is None
             else np.random.default_rng(seed).uniform(-1, 1, out.shape))
        out.backward(w.astype(out.dtype))
    return out.numpy(), [t.grad for t in inputs]
