"""The reductions of tinysparse/engine/ops_reduce.py (sum, mean, max, min): every form of axis=
(None, an int of either sign, a tuple mixing signs), keepdims, PyTorch's dim=/keepdim= spelling,
max and min with dim= returning (values, indices), and how max splits the gradient between ties.
Forward against NumPy, backward by ts.gradcheck (float64, every element); max and min are checked
on inputs without ties, where they are differentiable.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinysparse as ts
from tinysparse import Tensor, ops

from ops_helpers import FEW, close, leaf, seeds, shapes


def distinct(rng, shape):
    """Values at least 0.3 apart, shuffled: max has no ties, even after a 1e-6 nudge."""
    n = math.prod(shape)
    return Tensor((rng.permutation(n) * 0.3 - 0.15 * n).reshape(shape).astype(np.float64),
                  requires_grad=True)


def axes_for(ndim):
    """axis= arguments a reduction over `ndim` axes accepts: None, int (either sign), tuple."""
    options = [st.none()]
    if ndim:
        options.append(st.integers(-ndim, ndim - 1))
        options.append(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True)
                       .map(tuple))
        # a tuple mixing negative and positive axes
        options.append(st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True)
                       .map(lambda axes: tuple(a - ndim if i % 2 else a for i, a in enumerate(axes))))
    return st.one_of(options)


@pytest.mark.parametrize("name", ["sum", "mean", "max", "min"])
@settings(max_examples=25, deadline=None)
@given(data=st.data(), shape=shapes(), seed=seeds, keepdims=st.booleans())
def test_reductions(name, data, shape, seed, keepdims):
    rng = np.random.default_rng(seed)
    axis = data.draw(axes_for(len(shape)), label="axis")
    x = distinct(rng, shape) if name in ("max", "min") else leaf(rng, shape)
    fn = lambda x: getattr(x, name)(axis=axis, keepdims=keepdims)  # noqa: E731
    close(fn(x), getattr(np, name)(x.data, axis=axis, keepdims=keepdims))
    assert ts.gradcheck(fn, x)
    functional = getattr(ops, name)
    close(functional(x, axis=axis, keepdims=keepdims), fn(x).numpy())
    if name in ("sum", "mean"):  # PyTorch's spelling of the same call
        close(getattr(x, name)(dim=axis, keepdim=keepdims), fn(x).numpy())


@pytest.mark.parametrize("name", ["sum", "mean", "max", "min"])
@pytest.mark.parametrize("axis", [(-2, 3), (3, -2), (0, -1), (-3, 2), (-1, -4), (3, 0, -3)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_reductions_over_mixed_sign_axis_tuples(name, axis, keepdims, rng):
    """Negative and positive axes in one tuple: the backward must put the axes back in order."""
    x = distinct(rng, (2, 3, 1, 4)) if name in ("max", "min") else leaf(rng, (2, 3, 1, 4))
    fn = lambda x: getattr(x, name)(axis=axis, keepdims=keepdims)  # noqa: E731
    close(fn(x), getattr(np, name)(x.data, axis=axis, keepdims=keepdims))
    assert ts.gradcheck(fn, x)


def test_max_splits_the_gradient_between_ties():
    x = Tensor(np.array([[1.0, 3.0, 3.0], [5.0, 0.0, 5.0]]), requires_grad=True)
    x.max(axis=1).sum().backward()
    np.testing.assert_array_equal(x.grad, [[0, 0.5, 0.5], [0.5, 0, 0.5]])
    y = Tensor(np.array([[1.0, 3.0, 2.0], [1.0, 0.0, 5.0]]), requires_grad=True)
    y.min(axis=0).sum().backward()
    np.testing.assert_array_equal(y.grad, [[0.5, 0, 1], [0.5, 1, 0]])


@FEW
@given(shape=shapes(min_dims=1), seed=seeds)
def test_max_and_min_with_dim_gradcheck_through_the_values(shape, seed):
    rng = np.random.default_rng(seed)
    x = distinct(rng, shape)
    for name in ("max", "min"):
        values, indices = getattr(x, name)(dim=-1)
        close(values, getattr(np, name)(x.data, axis=-1))
        np.testing.assert_array_equal(indices.numpy(), getattr(np, f"arg{name}")(x.data, axis=-1))
        assert ts.gradcheck(lambda x: getattr(x, name)(dim=-1).values, x)


def test_mean_of_everything_divides_by_the_size():
    x = Tensor(np.ones((3, 5)), requires_grad=True)
    x.mean().backward()
    np.testing.assert_allclose(x.grad, np.full((3, 5), 1 / 15))
